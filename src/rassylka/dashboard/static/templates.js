// The template editor's live preview: as one types (300 ms after the last key), the texts and
// the chosen client go to POST /ui/template/preview, which renders them as dispatch would;
// the HTML is shown only inside a sandboxed iframe (srcdoc), never in this page.
"use strict";
(() => {
  const form = document.getElementById("template-form");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const FIELDS = ["email_subject", "email_html", "email_text", "sms_text"];
  const LABELS = { email_subject: "Тема", email_html: "HTML", email_text: "Текст письма",
    sms_text: "SMS", client_id: "Клиент", client_guid: "guid клиента", project_id: "Проект" };
  let timer = null;
  let asked = 0;

  function show(id, value) {
    $(id).textContent = value === null || value === undefined ? "—" : value;
  }

  function problems(list) {
    const box = $("preview-problems");
    box.replaceChildren();
    for (const [field, message] of list) {
      const item = document.createElement("li");
      item.textContent = `${LABELS[field] || field}: ${message}`;
      box.append(item);
    }
  }

  async function refresh() {
    const number = ++asked;
    const body = new FormData();
    body.append("csrf_token", window.rassylka.csrfToken());
    body.append("project_id", form.dataset.projectId);
    for (const name of FIELDS) body.append(name, form.elements[name].value);
    body.append("client_id", $("preview-client").value);
    body.append("client_guid", $("preview-guid").value);
    $("preview-status").textContent = "Обновляется…";
    let answer;
    try {
      answer = await window.rassylka.api("POST", "/ui/template/preview", body);
    } catch (_) {
      if (number === asked) $("preview-status").textContent = "Нет связи с сервером";
      return;
    }
    if (number !== asked) return; // a later keystroke asked again: its answer wins
    const payload = answer.payload || {};
    if (!answer.ok) {
      const error = payload.error || {};
      const details = (error.details || []).map((d) => [d.field, d.message]);
      problems(details.length ? details : [["", error.message || `Ошибка ${answer.status}`]]);
      $("preview-status").textContent = "Предпросмотр не построен";
      return;
    }
    const data = payload.data;
    show("preview-subject", data.subject);
    const frame = $("preview-html");
    // Only a change reloads the frame: typing in the SMS must not make the email blink.
    if (frame.srcdoc !== (data.html || "")) frame.srcdoc = data.html || "";
    show("preview-text", data.text);
    $("preview-text-origin").textContent = data.text_from_html ? "(сделан из HTML)" : "";
    show("preview-sms", data.sms);
    const counter = $("sms-counter");
    counter.textContent = data.sms_counter ? `SMS: ${data.sms_counter.summary}` : "";
    counter.classList.toggle("long", Boolean(data.sms_counter && data.sms_counter.segments > 1));
    problems(Object.entries(data.problems));
    const who = data.client ? `${data.client.name} (${data.client.guid})` : "образца";
    $("preview-status").textContent = `Для клиента: ${who}`;
  }

  function later() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  }

  for (const input of document.querySelectorAll("[data-preview]")) {
    input.addEventListener("input", later);
    input.addEventListener("change", later);
  }
  refresh();
})();
