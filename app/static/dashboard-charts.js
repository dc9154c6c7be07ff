// Hand-made SVG charts for the dashboard: no library. Every chart carries a <title> and an
// aria-label with its figures, and the stacked chart comes with a table of the same numbers.
"use strict";

const DashboardCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#3266c8", "#e07b22", "#2a9d5b", "#c2374b", "#7b53b8", "#1f9fb0", "#a87a1e", "#6b7385"];

  function number(value) {
    if (value === null || value === undefined) return "-";
    return Number(value).toLocaleString("en-US", { maximumFractionDigits: 2 });
  }

  function node(tag, attrs, text) {
    const element = document.createElementNS(NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) element.setAttribute(name, String(value));
    if (text !== undefined) element.textContent = text;
    return element;
  }

  function canvas(width, height, label) {
    const root = node("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
    root.appendChild(node("title", {}, label));
    return root;
  }

  function element(tag, text, className) {
    const made = document.createElement(tag);
    if (text !== undefined) made.textContent = text;
    if (className) made.className = className;
    return made;
  }

  function legend(names) {
    const list = element("ul", undefined, "legend");
    names.forEach((name, index) => {
      const item = element("li");
      item.appendChild(element("span", undefined, `swatch c${index % PALETTE.length}`));
      item.appendChild(document.createTextNode(name));
      list.appendChild(item);
    });
    return list;
  }

  function figures(days, clients, value) {
    const details = element("details");
    details.appendChild(element("summary", "Figures"));
    const table = element("table");
    table.appendChild(element("caption", "Credits per day and client"));
    const head = table.createTHead().insertRow();
    for (const name of ["Day", ...clients, "Total"]) head.appendChild(element("th", name));
    const body = table.createTBody();
    for (const day of days) {
      const row = body.insertRow();
      row.insertCell().textContent = day;
      let total = 0;
      for (const client of clients) {
        total += value(day, client);
        row.insertCell().textContent = number(value(day, client));
      }
      row.insertCell().textContent = number(total);
    }
    details.appendChild(table);
    return details;
  }

  // Credits per day, one bar per day, one segment per client that spent that day.
  function stacked(container, days, clients, value) {
    const width = 760, height = 240, left = 48, bottom = 24, top = 10;
    const totals = days.map((day) => clients.reduce((sum, client) => sum + value(day, client), 0));
    const peak = Math.max(...totals, 0) || 1;
    const label = `Credits per day by client: ` + days.map((day, i) => `${day} ${number(totals[i])}`).join(", ");
    const root = canvas(width, height, label);
    const plot = height - top - bottom, slot = (width - left) / Math.max(days.length, 1);
    for (const share of [0, 0.5, 1]) {
      const y = top + plot * (1 - share);
      root.appendChild(node("line", { x1: left, x2: width, y1: y, y2: y, stroke: share ? "#e3e7ee" : "#b8c0cf" }));
      root.appendChild(node("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, number(peak * share)));
    }
    const every = Math.ceil(days.length / 10);
    days.forEach((day, i) => {
      const bar = node("g", { class: "bar", "data-day": day });
      let y = top + plot;
      clients.forEach((client, c) => {
        const credits = value(day, client);
        if (!(credits > 0)) return;
        const h = (credits / peak) * plot;
        y -= h;
        const rect = node("rect", { class: "segment", "data-client": client, x: left + i * slot + slot * 0.15,
          y, width: slot * 0.7, height: h, fill: PALETTE[c % PALETTE.length] });
        rect.appendChild(node("title", {}, `${client}, ${day}: ${number(credits)} credits`));
        bar.appendChild(rect);
      });
      root.appendChild(bar);
      if (i % every === 0) {
        root.appendChild(node("text", { x: left + (i + 0.5) * slot, y: height - 6, "text-anchor": "middle" }, day.slice(5)));
      }
    });
    container.replaceChildren(legend(clients), root, figures(days, clients, value));
  }

  // Horizontal bars, one per item ({label, value, color index}), in the order given.
  function bars(container, items, unit) {
    const rowHeight = 22, width = 420, left = 150;
    const short = (text) => (text.length > 18 ? `${text.slice(0, 17)}…` : text);
    const peak = Math.max(...items.map((item) => item.value), 0) || 1;
    const label = items.map((item) => `${item.label} ${number(item.value)} ${unit}`).join(", ") || `no ${unit}`;
    const root = canvas(width, Math.max(items.length, 1) * rowHeight + 4, label);
    items.forEach((item, i) => {
      const y = i * rowHeight + 2;
      root.appendChild(node("text", { x: left - 6, y: y + 14, "text-anchor": "end" }, short(item.label)));
      const rect = node("rect", { class: "bar", x: left, y: y + 3, height: rowHeight - 8,
        width: Math.max((item.value / peak) * (width - left - 60), 1), fill: PALETTE[(item.color ?? i) % PALETTE.length] });
      rect.appendChild(node("title", {}, `${item.label}: ${number(item.value)} ${unit}`));
      root.appendChild(rect);
      root.appendChild(node("text", { x: left + Math.max((item.value / peak) * (width - left - 60), 1) + 4, y: y + 14 }, number(item.value)));
    });
    container.replaceChildren(root);
  }

  // One budget as a bar: used, reserved by requests in flight, and what remains.
  function budget(total, spent, reserved) {
    const width = 220, height = 14;
    const share = (part) => Math.max(0, Math.min(part / total, 1)) * width;
    const used = share(spent), held = Math.min(share(reserved), width - used);
    const label = `${number(spent)} used, ${number(reserved)} reserved, of ${number(total)} credits`;
    const root = canvas(width, height, label);
    root.setAttribute("class", "budget-bar");
    root.appendChild(node("rect", { class: "remaining", x: 0, y: 0, width, height, fill: "#e3e7ee" }));
    root.appendChild(node("rect", { class: "used", x: 0, y: 0, width: used, height, fill: spent >= total ? "#a4161a" : "#3266c8" }));
    root.appendChild(node("rect", { class: "reserved", x: used, y: 0, width: held, height, fill: "#9db5e6" }));
    return root;
  }

  return { number, stacked, bars, budget, element };
})();
