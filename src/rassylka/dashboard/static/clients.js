// The import page: the CSV file goes to the JSON API (POST /client/import) with
// XMLHttpRequest, whose upload events drive the <progress>; then the summary and the rejected
// rows are shown. Without this script the form posts to the dashboard, which answers the same.
"use strict";
(() => {
  const form = document.getElementById("import-form");
  if (!form) return;
  const box = document.getElementById("import-upload");
  const bar = document.getElementById("import-progress");
  const percent = document.getElementById("import-percent");
  const result = document.getElementById("import-result");
  const button = form.querySelector('button[type="submit"]');

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    return node;
  }

  function showProgress(loaded, total) {
    bar.max = total || 1;
    bar.value = Math.min(loaded, total || 1);
    percent.textContent = total ? `${Math.round((100 * loaded) / total)} %` : "";
  }

  function showSummary(data) {
    result.replaceChildren();
    result.append(el("h2", "Импорт завершён"));
    const counts = el("p", null, { class: "counts" });
    const parts = [["Создано", "created"], ["обновлено", "updated"], ["отклонено строк", "rejected"]];
    parts.forEach(([label, key], index) => {
      counts.append(`${index ? " · " : ""}${label}: `);
      counts.append(el("strong", data[key], { "data-count": key }));
    });
    result.append(counts);
    if (data.errors && data.errors.length) {
      const table = el("table", null, { class: "rejected" });
      table.append(el("caption", "Отклонённые строки"));
      const head = el("tr");
      head.append(el("th", "Строка", { scope: "col", class: "num" }), el("th", "Поле", { scope: "col" }),
        el("th", "Ошибка", { scope: "col" }));
      const thead = el("thead");
      thead.append(head);
      table.append(thead);
      const body = el("tbody");
      for (const error of data.errors) {
        const row = el("tr");
        const field = el("td");
        field.append(el("code", error.field));
        row.append(el("td", error.row, { class: "num" }), field, el("td", error.message));
        body.append(row);
      }
      table.append(body);
      result.append(table);
      if (data.errors_truncated) result.append(el("p", "Показаны не все ошибки.", { class: "muted" }));
    }
    const back = el("p");
    back.append(el("a", "К списку клиентов", { href: `/ui/project/${form.elements.project_id.value}/clients` }));
    result.append(back);
  }

  function showFailure(status, payload) {
    result.replaceChildren();
    const box = el("div", null, { class: "failed" });
    box.append(el("h2", "Файл не принят"));
    const list = el("ul", null, { class: "errors" });
    const error = payload && payload.error;
    const details = (error && error.details) || [];
    if (!details.length) list.append(el("li", (error && error.message) || `Ошибка ${status}`));
    for (const detail of details) {
      const item = el("li");
      if (detail.field) { item.append(el("code", detail.field), ": "); }
      item.append(detail.message);
      list.append(item);
    }
    box.append(list);
    result.append(box);
  }

  form.addEventListener("submit", (event) => {
    const file = form.elements.file.files[0];
    if (!file) return; // the browser's own "required" message
    event.preventDefault();
    const body = new FormData();
    body.append("file", file);
    const xhr = new XMLHttpRequest();
    const code = encodeURIComponent(form.dataset.projectCode);
    xhr.open("POST", `/client/import?project=${code}`);
    xhr.setRequestHeader("X-CSRF-Token", window.rassylka.csrfToken());
    xhr.responseType = "json";
    box.hidden = false;
    button.disabled = true;
    showProgress(0, file.size);
    result.replaceChildren(el("p", "Файл загружается…", { class: "muted" }));
    xhr.upload.addEventListener("progress", (e) => showProgress(e.loaded, e.lengthComputable ? e.total : file.size));
    xhr.upload.addEventListener("load", () => {
      showProgress(1, 1);
      result.replaceChildren(el("p", "Файл загружен, клиенты сохраняются…", { class: "muted" }));
    });
    xhr.addEventListener("load", () => {
      button.disabled = false;
      showProgress(1, 1);
      const payload = xhr.response;
      if (xhr.status >= 200 && xhr.status < 300 && payload && payload.data) showSummary(payload.data);
      else showFailure(xhr.status, payload);
    });
    xhr.addEventListener("error", () => {
      button.disabled = false;
      showFailure(0, { error: { message: "Нет связи с сервером: файл не загружен" } });
    });
    xhr.send(body);
  });
})();
