// A mailing's live page (docs/dashboard-mailing.md). The server renders the numbers; this keeps
// them current without reloading: the mailing's event stream (EventSource, resumed with
// Last-Event-ID) shows each status change as it happens and tells when to fetch the numbers
// again (GET /mailing/{id}/stats, at most once a second, less often when counting takes long). Some changes have no event (a run's
// messages made as queued, the mailing's own status), so a slow poll catches those.
"use strict";
(() => {
  const config = JSON.parse(document.getElementById("mailing-live").textContent);
  const id = config.mailing_id;
  const ACTIVE = 1, PAUSED = 2;
  const RATE_WINDOW_MS = 10000;
  const REFRESH_GAP_MS = 1000;
  // A big mailing's numbers take a while to count: the page then asks less often, so that an
  // open page never keeps the database busy (at most a fifth of its time).
  const REFRESH_COST_FACTOR = 5;
  const MAX_POINTS = 600;
  // Set once per page load: a test (or a person in the console) can tell the page was not reloaded.
  window.rassylkaMailingPage = {
    mailingId: id, loadedAt: Date.now(), received: 0, events: 0, reconnects: 0, refreshes: 0,
  };
  const state = window.rassylkaMailingPage;

  const $ = (selector) => document.querySelector(selector);
  const sum = (values) => values.reduce((a, b) => a + b, 0);
  let status = config.status;
  let timezone = "UTC";
  let lastEventId = config.cursor;
  let failedDirty = false;
  let refreshing = false, refreshAgain = false, lastRefresh = 0, refreshTimer = null;
  let refreshGap = REFRESH_GAP_MS;
  const sends = [];  // arrival times of send attempts that ended (events from "sending")
  const points = [];

  // -- the numbers --------------------------------------------------------------------------
  function renderCounts(stats) {
    const rows = { all: stats.total.by_status, ...stats.total.by_channel };
    const body = $("#counts tbody");
    for (const [channel, perStatus] of Object.entries(rows)) {
      let row = body.querySelector(`tr[data-channel="${CSS.escape(channel)}"]`);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.channel = channel;
        const head = document.createElement("th");
        head.scope = "row";
        head.textContent = channel;
        row.append(head);
        for (const name of ["total", ...config.statuses]) {
          const cell = document.createElement("td");
          cell.className = "num";
          cell.dataset.status = name;
          row.append(cell);
        }
        body.append(row);
      }
      for (const cell of row.querySelectorAll("td[data-status]")) {
        const name = cell.dataset.status;
        cell.textContent = String(name === "total" ? sum(Object.values(perStatus)) : perStatus[name] || 0);
      }
    }
    addPoint(stats.total.by_status);
  }

  function localTime(iso) {
    if (!iso) return "нет";
    const parts = new Intl.DateTimeFormat("sv-SE", {
      timeZone: timezone, year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit",
    }).format(new Date(iso));
    return parts;
  }

  function renderMailing(mailing, stats) {
    status = mailing.status;
    timezone = mailing.timezone;
    const badge = $("#mailing-status");
    badge.textContent = config.status_names[String(status)] || String(status);
    badge.className = `badge mailing-status-${status}`;
    const reason = $("#mailing-reason");
    reason.textContent = mailing.status_reason || "";
    reason.hidden = !mailing.status_reason;
    $("#mailing-next").textContent = localTime(mailing.next_run_at);
    $("#mailing-runs").textContent = String(mailing.runs_count);
    const pending = (stats.total.by_status.queued || 0) + (stats.total.by_status.sending || 0);
    let phase = "";
    if (status === ACTIVE) {
      phase = pending ? `— идёт отправка, в очереди ${pending}`
        : mailing.next_run_at ? `— запланирована на ${localTime(mailing.next_run_at)}` : "";
    } else if (status === PAUSED && pending) {
      phase = `— ждут отправки ${pending}`;
    }
    $("#mailing-phase").textContent = phase;
    for (const action of config.actions) {
      const form = document.querySelector(`[data-mailing-actions] form[data-action="${action.name}"]`);
      if (form) form.hidden = !action.from.includes(status);
    }
  }

  async function refresh() {
    if (refreshing) { refreshAgain = true; return; }
    refreshing = true;
    lastRefresh = Date.now();
    try {
      const wantFailed = failedDirty;
      failedDirty = false;
      const [mailing, stats, failed] = await Promise.all([
        rassylka.api("GET", `/mailing/${id}`),
        rassylka.api("GET", `/mailing/${id}/stats`),
        wantFailed ? rassylka.api("GET", `/mailing/${id}/messages?status=failed&limit=${config.failed_shown}`) : null,
      ]);
      if (stats.ok) renderCounts(stats.payload.data);
      if (mailing.ok && stats.ok) renderMailing(mailing.payload.data, stats.payload.data);
      if (failed && failed.ok) renderFailed(failed.payload.data);
      else if (wantFailed) failedDirty = true;
      state.refreshes += 1;
      refreshGap = Math.max(REFRESH_GAP_MS, (Date.now() - lastRefresh) * REFRESH_COST_FACTOR);
    } catch (_) {
      failedDirty = true;  // the server away: the next poll tries again
    } finally {
      refreshing = false;
      if (refreshAgain) { refreshAgain = false; soon(); }
    }
  }

  // A burst of events fetches the numbers once a second, not once per event.
  function soon() {
    if (refreshTimer !== null) return;
    const wait = Math.max(0, lastRefresh + refreshGap - Date.now());
    refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, wait);
  }

  // -- the chart: inline SVG, three polylines over time --------------------------------------
  function addPoint(byStatus) {
    const get = (name) => byStatus[name] || 0;
    points.push({
      t: Date.now(),
      sent: get("sent") + get("delivered") + get("undelivered") + get("bounced"),
      delivered: get("delivered"),
      failed: get("failed") + get("undelivered") + get("bounced") + get("expired"),
    });
    if (points.length > MAX_POINTS) points.shift();
    drawChart();
  }

  function drawChart() {
    const svg = $("#chart");
    const width = 640, height = 200;
    const first = points[0].t;
    const span = Math.max(10000, points[points.length - 1].t - first);
    const top = Math.max(1, ...points.map((p) => Math.max(p.sent, p.delivered, p.failed)));
    const x = (p) => (((p.t - first) / span) * width).toFixed(1);
    for (const line of svg.querySelectorAll("polyline[data-series]")) {
      const series = line.dataset.series;
      const y = (p) => (height - 1 - (p[series] / top) * (height - 10)).toFixed(1);
      // Steps: a count holds until the next look changes it.
      line.setAttribute("points", points.map((p, i) =>
        (i ? `${x(p)},${y(points[i - 1])} ` : "") + `${x(p)},${y(p)}`).join(" "));
    }
    $("#chart-scale").textContent = `шкала: 0–${top} сообщ., ${Math.round(span / 1000)} с`;
  }

  // -- events ---------------------------------------------------------------------------------
  function eventItem(event) {
    const item = document.createElement("li");
    item.dataset.eventId = String(event.id);
    const when = document.createElement("time");
    when.dateTime = event.created_at;
    when.textContent = String(event.created_at).slice(11, 19);
    const channel = document.createElement("span");
    channel.className = "channel";
    channel.textContent = event.channel;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = event.client_guid || (event.client_id ? `клиент ${event.client_id}` : `сообщение ${event.message_id}`);
    const change = document.createElement("span");
    const to = document.createElement("strong");
    to.className = `status-${event.status}`;
    to.textContent = event.status;
    change.append(`${event.old_status || "—"} → `, to);
    item.append(when, " ", channel, " ", who, " ", change);
    if (event.reason) {
      const reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = event.reason;
      item.append(" ", reason);
    }
    return item;
  }

  function onStatus(message) {
    const event = JSON.parse(message.data);
    state.received += 1;
    if (event.id <= lastEventId) return;  // shown already (a resumed stream repeats nothing, but the page's first list may)
    lastEventId = event.id;
    state.events += 1;
    const list = $("#events");
    list.prepend(eventItem(event));
    while (list.children.length > config.latest_shown) list.lastElementChild.remove();
    $("#events-empty").hidden = true;
    if (event.old_status === "sending" && event.status !== "unsubscribed") sends.push(Date.now());
    if (event.status === "failed" || event.old_status === "failed") failedDirty = true;
    soon();
  }

  function showRate() {
    const since = Date.now() - RATE_WINDOW_MS;
    while (sends.length && sends[0] < since) sends.shift();
    const rate = sends.length / (RATE_WINDOW_MS / 1000);
    $("#send-rate").textContent = rate.toLocaleString("ru-RU", { maximumFractionDigits: 1 });
  }

  function streamState(text) {
    const line = $("#stream-state");
    if (line.textContent !== text) line.textContent = text;
  }

  function connect() {
    const source = new EventSource(`/mailing/${id}/events?last_event_id=${lastEventId}`);
    source.addEventListener("open", () => streamState("Обновление: подключено"));
    source.addEventListener("status", onStatus);
    source.addEventListener("unsubscribed", onStatus);  // listed; it changes no status
    source.addEventListener("reconnect", () => {
      // The server ends a stream now and then (its lifetime, a restart); EventSource comes
      // back by itself, resuming after the last id with Last-Event-ID.
      state.reconnects += 1;
      streamState("Обновление: переподключение…");
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (a 4xx/5xx answer): EventSource gives up for good; try again later, from
        // the last event shown.
        streamState("Обновление: нет связи, переподключение…");
        setTimeout(connect, 5000);
      } else {
        streamState("Обновление: переподключение…");
      }
    });
  }

  // -- failed messages and their retry ------------------------------------------------------
  function renderFailed(page) {
    const body = $("#failed tbody");
    body.replaceChildren(...page.items.map((message) => {
      const row = document.createElement("tr");
      const cells = [`#${message.id}`, message.channel === 2 ? "sms" : "email", message.address || "",
        message.reason || "", String(message.attempts)];
      cells.forEach((text, index) => {
        const cell = document.createElement("td");
        cell.textContent = text;
        if (index === 3) cell.className = "reason";
        if (index === 4) cell.className = "num";
        row.append(cell);
      });
      return row;
    }));
    $("#failed-total").textContent = String(page.total);
    $("#failed-empty").hidden = page.items.length > 0;
  }

  $("#retry-form").addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    const button = submitted.target.querySelector("button");
    const result = $("#retry-result");
    button.disabled = true;
    result.textContent = "Отправляем повторно…";
    try {
      const answer = await rassylka.api("POST", `/mailing/${id}/retry-failed`);
      if (answer.ok) {
        const requeued = answer.payload.data.requeued;
        result.textContent = requeued ? `Снова в очереди: ${requeued}` : "Повторять нечего: неудачных сообщений нет";
      } else {
        // The error envelope: {"code": 409, "error": {"message", "details": [{field, message}]}}.
        const error = (answer.payload && answer.payload.error) || {};
        const details = (error.details || []).map((detail) => detail.message).join("; ");
        result.textContent = `Не получилось: ${details || error.message || answer.status}`;
      }
    } catch (_) {
      result.textContent = "Не получилось: сервер недоступен";
    } finally {
      button.disabled = false;
      failedDirty = true;
      refresh();
    }
  });

  // -- start ----------------------------------------------------------------------------------
  addPoint(config.stats.total.by_status);
  connect();
  refresh();
  setInterval(showRate, 1000);
  // The changes without events (messages made as queued, the mailing's status): a look every
  // 3 s while it may still send, every 15 s once it is over.
  let sinceLook = 0;
  setInterval(() => {
    sinceLook += 3;
    if (document.hidden) return;
    if (status === ACTIVE || status === PAUSED || sinceLook >= 15) { sinceLook = 0; soon(); }
  }, 3000);
})();
