// The dashboard's logic: asks for the admin key once per tab (sessionStorage), reads the admin
// API with it, and fills the page. Text goes in with textContent only, never as markup.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const { number, element } = DashboardCharts;
  const STORE = "mavera-gateway.admin-key";
  const REFUSED = "That admin key was refused by the gateway.";
  const HOURS = { "24h": 24, "7d": 168, "30d": 720 };
  const DAY_MS = 86400000;

  class Refused extends Error {}

  async function get(path) {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem(STORE)}` };
    const answer = await fetch(path, { headers, cache: "no-store" });
    const data = await answer.json().catch(() => null);
    if (answer.status === 401) throw new Refused(REFUSED);
    if (!answer.ok) throw new Error(data && data.error ? data.error.message : `HTTP ${answer.status}`);
    return data;
  }

  // An optional panel's data: {data} or {error}; only a refused key stops the whole page.
  async function attempt(path) {
    try {
      return { data: await get(path) };
    } catch (error) {
      if (error instanceof Refused) throw error;
      return { error: error.message };
    }
  }

  function say(text, isError) {
    $("message").textContent = text;
    $("message").className = isError ? "message error" : "message muted";
  }

  function signedOut(text, isError) {
    $("login").hidden = false;
    $("controls").hidden = true;
    $("data").hidden = true;
    for (const body of document.querySelectorAll("#data tbody")) body.replaceChildren();
    for (const chart of document.querySelectorAll("#data .chart, #reconcile")) chart.replaceChildren();
    say(text, isError);
  }

  function utcDays(period) {
    const now = Date.now(), first = Math.floor((now - HOURS[period] * 3600000) / DAY_MS);
    const days = [];
    for (let day = first; day <= Math.floor(now / DAY_MS); day += 1) {
      days.push(new Date(day * DAY_MS).toISOString().slice(0, 10));
    }
    return days;
  }

  function ms(value) {
    return value === null ? "-" : Math.round(value).toLocaleString("en-US");
  }

  function percent(part, whole) {
    return whole ? `${(Math.round((part / whole) * 1000) / 10).toLocaleString("en-US")}%` : "-";
  }

  function row(body, cells, data) {
    const tr = body.insertRow();
    for (const [name, value] of Object.entries(data || {})) tr.dataset[name] = value;
    for (const [className, text] of cells) {
      const td = tr.insertCell();
      td.className = className;
      if (text instanceof Node) td.appendChild(text); else td.textContent = text;
    }
    return tr;
  }

  function showClients(rows) {
    const body = $("clients").tBodies[0];
    body.replaceChildren();
    for (const r of rows) {
      row(body, [["client", r.client], ["credits", number(r.credits)], ["unknown", number(r.unknown_credits)],
        ["requests", number(r.requests)], ["error-rate", percent(r.errors, r.requests)],
        ["p50", ms(r.p50_ms)], ["p95", ms(r.p95_ms)]], { client: r.client });
    }
    if (!rows.length) row(body, [["empty", "No requests in this period."]]);
    const ordered = rows.map((r, color) => ({ label: r.client, value: r.credits, color }));
    ordered.sort((a, b) => b.value - a.value);
    DashboardCharts.bars($("client-chart"), ordered, "credits");
    const sum = (field) => rows.reduce((total, r) => total + r[field], 0);
    $("total-credits").textContent = number(sum("credits"));
    $("total-requests").textContent = number(sum("requests"));
    $("error-rate").textContent = percent(sum("errors"), sum("requests"));
    $("unknown-total").textContent = number(sum("unknown_credits"));
  }

  function showDaily(days, clients, reports) {
    const credits = new Map();
    clients.forEach((client, i) => {
      for (const r of reports[i].data) credits.set(`${r.day}|${client}`, r.credits);
    });
    DashboardCharts.stacked($("daily"), days, clients, (day, client) => credits.get(`${day}|${client}`) || 0);
  }

  // "2027-01-01T00:00:00+01:00" as "2027-01-01 00:00 +01:00" ("UTC" for Z and +00:00).
  function when(iso) {
    const parts = iso && /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d)[^Z+-]*(Z|[+-]\d\d:\d\d)?$/.exec(iso);
    if (!parts) return iso || "-";
    const zone = !parts[3] || parts[3] === "Z" || parts[3] === "+00:00" ? "UTC" : parts[3];
    return `${parts[1]} ${parts[2]} ${zone}`;
  }

  function showBudgets(keys, spends) {
    const body = $("budgets").tBodies[0];
    body.replaceChildren();
    keys.forEach((key, i) => {
      const spend = spends[i].data;
      if (!spend) {
        row(body, [["client", key.name], ["budget", `${number(key.credit_budget)} / ${key.budget_period}`],
          ["used unavailable", "unavailable"], ["reserved", "-"], ["remaining", "-"], ["resets", "-"],
          ["in-flight", "-"]], { client: key.name });
        return;
      }
      const used = element("span");
      used.appendChild(DashboardCharts.budget(spend.budget, spend.spent, spend.reserved));
      used.appendChild(document.createTextNode(number(spend.spent)));
      row(body, [["client", key.name], ["budget", `${number(spend.budget)} / ${spend.period}`], ["used", used],
        ["reserved", number(spend.reserved)], ["remaining", number(spend.remaining)],
        ["resets", when(spend.resets_at)],
        ["in-flight", spend.max_concurrent ? `${spend.in_flight} of ${spend.max_concurrent}` : number(spend.in_flight)]],
        { client: key.name });
    });
    if (!keys.length) row(body, [["empty", "No client has a credit budget."]]);
  }

  function showPersonas(rows) {
    const top = [...rows].sort((a, b) => b.credits - a.credits || b.requests - a.requests).slice(0, 8);
    const name = (r) => r.persona_name || (r.persona === "-" ? "(no persona)" : r.persona);
    const body = $("personas").tBodies[0];
    body.replaceChildren();
    for (const r of top) {
      row(body, [["persona", name(r)], ["credits", number(r.credits)], ["requests", number(r.requests)]], { persona: r.persona });
    }
    if (!top.length) row(body, [["empty", "No requests in this period."]]);
    DashboardCharts.bars($("persona-chart"), top.map((r) => ({ label: name(r), value: r.credits })), "credits");
  }

  function fact(list, term, value, className) {
    list.appendChild(element("dt", term));
    list.appendChild(element("dd", value, className));
  }

  function showReconcile(result) {
    const panel = $("reconcile");
    if (!result.data) {
      const note = element("p");
      note.appendChild(element("span", "unavailable", "unavailable"));
      note.appendChild(document.createTextNode(`: ${result.error}`));
      panel.replaceChildren(note);
      $("balance").textContent = "unavailable";
      $("reconcile-figure").textContent = "unavailable";
      return;
    }
    const r = result.data, list = element("dl");
    const verdict = r.agrees ? "agrees" : `differs by ${number(r.difference)}`;
    fact(list, "Billing period", `${when(r.billing_period.start)} to ${when(r.billing_period.end)}`);
    fact(list, "Credits used, as Mavera bills them", number(r.mavera.credits_used));
    fact(list, "Credits used, as the ledger records them", number(r.ledger.credits_used));
    const which = r.agrees ? "agrees" : r.difference > 0 ? "Mavera billed more than the ledger recorded"
      : "the ledger recorded more than Mavera billed";
    fact(list, "Difference", `${number(r.difference)}: ${which}`, r.agrees ? "agrees" : "differs");
    fact(list, "Requests of unknown cost", number(r.ledger.unknown_cost_requests));
    fact(list, "Mavera credits left", `${number(r.mavera.credits_remaining)} of ${number(r.mavera.credits_included)}`);
    panel.replaceChildren(list);
    $("balance").textContent = number(r.mavera.credits_remaining);
    $("reconcile-figure").textContent = verdict;
  }

  let latest = 0; // a load overtaken by a newer one (period changed meanwhile) shows nothing

  async function load() {
    if (!sessionStorage.getItem(STORE)) return;
    const since = $("period").value, days = utcDays(since), mine = ++latest;
    say("Loading…");
    try {
      const [clients, personas, keys] = await Promise.all([
        get(`/admin/usage?since=${since}&by=client`), get(`/admin/usage?since=${since}&by=persona`), get("/admin/keys")]);
      const names = clients.data.map((r) => r.client);
      const budgeted = keys.data.filter((k) => k.revoked_at === null && k.credit_budget !== null);
      const [daily, spends, reconcile] = await Promise.all([
        Promise.all(names.map((name) => get(`/admin/usage?since=${since}&by=day&client=${encodeURIComponent(name)}`))),
        Promise.all(budgeted.map((k) => attempt(`/admin/clients/${encodeURIComponent(k.name)}/spend`))),
        attempt("/admin/reconcile")]);
      if (mine !== latest) return;
      $("login").hidden = true;
      $("controls").hidden = false;
      $("data").hidden = false;
      showClients(clients.data);
      showDaily(days, names, daily);
      showBudgets(budgeted, spends);
      showPersonas(personas.data);
      showReconcile(reconcile);
      say("");
      $("updated").textContent = `Updated ${new Date().toISOString().replace("T", " ").slice(0, 19)} UTC.`;
    } catch (error) {
      if (mine !== latest) return;
      if (!(error instanceof Refused)) return say(`The gateway did not answer: ${error.message}`, true);
      sessionStorage.removeItem(STORE);
      signedOut(REFUSED, true);
    }
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(STORE, $("key").value.trim());
    $("key").value = "";
    load();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(STORE);
    signedOut("The admin key is forgotten in this tab.", false);
  });
  $("refresh").addEventListener("click", load);
  $("period").addEventListener("change", load);
  load();
})();
