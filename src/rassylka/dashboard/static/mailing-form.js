// The new-mailing form: show the moment and the cron fields only when "when" needs them (the
// form works the same without this: the server ignores the fields the choice does not use).
"use strict";
(() => {
  const form = document.querySelector("form.mailing-form");
  if (!form) return;
  const holder = (name) => form.querySelector(`[name="${name}"]`).closest(".field");
  const event = holder("event"), cron = holder("cron");
  const show = () => {
    const when = (form.querySelector('input[name="when"]:checked') || {}).value || "now";
    event.hidden = when === "now";
    cron.hidden = when !== "schedule";
  };
  for (const radio of form.querySelectorAll('input[name="when"]')) radio.addEventListener("change", show);
  show();
})();
