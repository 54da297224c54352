// The tenant console's script: progressive enhancement over server-rendered pages. Everything it
// shows that moves (usage chart, ingestion progress, search, the playground's stream) comes from
// the platform's own JSON API, called with a short-lived token for the signed-in member.
"use strict";

(function () {
  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    const field = document.querySelector("input[name=csrfmiddlewaretoken]");
    return match ? decodeURIComponent(match[1]) : field ? field.value : "";
  }

  let token = null;
  let tokenExpires = 0;

  async function apiToken() {
    if (token && Date.now() < tokenExpires) return token;
    const response = await fetch("/console/token/", {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error("Your session has ended: sign in again.");
    const body = await response.json();
    token = body.access;
    tokenExpires = Date.now() + (body.expires_in - 30) * 1000;
    return token;
  }

  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = Object.assign({ Authorization: "Bearer " + (await apiToken()) }, opts.headers || {});
    if (opts.json !== undefined) {
      opts.body = JSON.stringify(opts.json);
      opts.headers["Content-Type"] = "application/json";
      delete opts.json;
    }
    const response = await fetch(path, opts);
    if (response.status === 204) return null;
    const body = (response.headers.get("Content-Type") || "").startsWith("application/json") ? await response.json() : null;
    if (!response.ok) {
      const message = body && body.error ? body.error.message : "The request failed (" + response.status + ").";
      throw new Error(message);
    }
    return body;
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([name, value]) => {
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    });
    (children || []).forEach((child) => node.append(child));
    return node;
  }

  // --- Every page ---------------------------------------------------------------------------

  function enhanceCommon() {
    document.querySelectorAll("[data-copy]").forEach((button) => {
      button.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(button.dataset.copy);
          button.textContent = "Copied";
        } catch (error) {
          const range = document.createRange();
          range.selectNodeContents(button.previousElementSibling);
          const selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          button.textContent = "Selected: press Ctrl+C";
        }
      });
    });
    document.querySelectorAll("form[data-confirm]").forEach((form) => {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
    document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
      select.addEventListener("change", () => select.form.submit());
    });
    document.querySelectorAll("[data-print]").forEach((button) => button.addEventListener("click", () => window.print()));
  }

  // --- Usage --------------------------------------------------------------------------------

  const PALETTE = ["#1f5fbf", "#e07b00", "#2e9d52", "#b3261e", "#7b4fc4", "#00838f", "#8d6e63", "#c2185b"];

  function drawChart(figure, rows, start, end) {
    const days = [];
    for (let day = new Date(start + "T00:00:00Z"); day <= new Date(end + "T00:00:00Z"); day.setUTCDate(day.getUTCDate() + 1)) {
      days.push(day.toISOString().slice(0, 10));
    }
    const models = [...new Set(rows.map((row) => row.model))].sort();
    const totals = {};
    rows.forEach((row) => {
      totals[row.day] = totals[row.day] || {};
      totals[row.day][row.model] = row.total_tokens;
    });
    const max = Math.max(1, ...days.map((day) => Object.values(totals[day] || {}).reduce((a, b) => a + b, 0)));
    const width = 720, height = 260, left = 56, bottom = 28, top = 10;
    const slot = (width - left) / Math.max(1, days.length);
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `Tokens per day from ${start} to ${end}, stacked by model`);
    svg.dataset.days = String(days.length);
    const scale = (value) => ((height - bottom - top) * value) / max;
    [0, 0.5, 1].forEach((fraction) => {
      const y = height - bottom - scale(max * fraction);
      const line = document.createElementNS(ns, "line");
      Object.entries({ x1: left, x2: width, y1: y, y2: y, stroke: "#d9dee5" }).forEach(([k, v]) => line.setAttribute(k, v));
      const label = document.createElementNS(ns, "text");
      Object.entries({ x: left - 6, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#5b6675" }).forEach(([k, v]) => label.setAttribute(k, v));
      label.textContent = Math.round(max * fraction).toLocaleString();
      svg.append(line, label);
    });
    days.forEach((day, index) => {
      let y = height - bottom;
      models.forEach((model, modelIndex) => {
        const value = (totals[day] || {})[model] || 0;
        if (!value) return;
        const h = scale(value);
        y -= h;
        const rect = document.createElementNS(ns, "rect");
        Object.entries({ x: left + index * slot + slot * 0.15, y, width: Math.max(1, slot * 0.7), height: h, fill: PALETTE[modelIndex % PALETTE.length] })
          .forEach(([k, v]) => rect.setAttribute(k, v));
        rect.dataset.model = model;
        rect.dataset.day = day;
        const title = document.createElementNS(ns, "title");
        title.textContent = `${day} · ${model}: ${value.toLocaleString()} tokens`;
        rect.append(title);
        svg.append(rect);
      });
      if (days.length <= 14 || index % Math.ceil(days.length / 10) === 0) {
        const label = document.createElementNS(ns, "text");
        Object.entries({ x: left + index * slot + slot / 2, y: height - 8, "text-anchor": "middle", "font-size": 11, fill: "#5b6675" }).forEach(([k, v]) => label.setAttribute(k, v));
        label.textContent = day.slice(5);
        svg.append(label);
      }
    });
    const legend = el("ul", { class: "legend" }, models.map((model, i) =>
      el("li", {}, [el("span", { class: "swatch", style: `background:${PALETTE[i % PALETTE.length]}` }), model])));
    figure.replaceChildren(svg, legend);
    if (!rows.length) figure.append(el("p", { class: "help", text: "No usage in this range yet." }));
  }

  function fillTable(table, rows, groupBy) {
    const head = el("tr", {}, [groupBy, "requests", "prompt tokens", "completion tokens", "total"].map((name) => el("th", { scope: "col", text: name })));
    table.tHead.replaceChildren(head);
    table.tBodies[0].replaceChildren(...rows.map((row) => el("tr", {}, [
      el("td", { text: String(row[groupBy] ?? "—") }),
      ...["requests", "prompt_tokens", "completion_tokens", "total_tokens"].map((name) => el("td", { class: "num", text: row[name].toLocaleString() })),
    ])));
    if (!rows.length) table.tBodies[0].append(el("tr", {}, [el("td", { colspan: "5", text: "No usage in this range." })]));
  }

  function enhanceUsage() {
    const form = document.getElementById("usage-form");
    if (!form) return;
    const figure = document.getElementById("usage-chart");
    const table = document.getElementById("usage-table");
    const csv = document.getElementById("csv-link");
    async function load() {
      const params = new URLSearchParams(new FormData(form));
      const start = params.get("start"), end = params.get("end"), groupBy = params.get("group_by");
      csv.href = `/console/usage.csv?${params}`;
      document.getElementById("table-title").textContent = "By " + form.group_by.selectedOptions[0].text;
      try {
        const [chart, grouped] = await Promise.all([
          api(`/api/v1/usage/?start=${start}&end=${end}&group_by=day&split_by=model`),
          api(`/api/v1/usage/?start=${start}&end=${end}&group_by=${groupBy}`),
        ]);
        drawChart(figure, chart.data, chart.start, chart.end);
        fillTable(table, grouped.data, groupBy);
      } catch (error) {
        figure.replaceChildren(el("p", { class: "errors", role: "alert", text: error.message }));
      }
    }
    form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
    load();
  }

  // --- Documents ----------------------------------------------------------------------------

  const FINAL = new Set(["indexed", "failed"]);

  function documentRow(doc, canWrite) {
    const progress = doc.chunks_total ? `${doc.chunks_embedded} of ${doc.chunks_total} chunks` : "";
    const row = el("tr", { "data-document": String(doc.id), "data-status": doc.status }, [
      el("td", { text: doc.title }),
      el("td", { class: "status-" + doc.status, text: doc.status + (doc.error ? `: ${doc.error}` : "") }),
      el("td", {}, [doc.chunks_total ? el("progress", { max: String(doc.chunks_total), value: String(doc.chunks_embedded), "aria-label": progress }) : "", " ", progress]),
      el("td", { text: (doc.created_at || "").slice(0, 16).replace("T", " ") }),
    ]);
    if (canWrite) {
      const button = el("button", { type: "button", class: "danger", text: "Delete" });
      button.addEventListener("click", async () => {
        if (!window.confirm(`Delete ${doc.title}? Its passages leave every search at once.`)) return;
        await api(`/api/v1/documents/${doc.id}/`, { method: "DELETE" });
        row.remove();
      });
      row.append(el("td", {}, [button]));
    }
    return row;
  }

  function enhanceDocuments() {
    const body = document.getElementById("documents");
    if (!body) return;
    const canWrite = body.dataset.canWrite === "1";
    const watched = new Map();

    function show(doc) {
      const row = documentRow(doc, canWrite);
      const existing = body.querySelector(`tr[data-document="${doc.id}"]`);
      if (existing) existing.replaceWith(row); else body.prepend(row);
      if (!FINAL.has(doc.status)) watched.set(doc.id, true); else watched.delete(doc.id);
    }

    async function poll() {
      for (const id of [...watched.keys()]) {
        try { show(await api(`/api/v1/documents/${id}/`)); } catch (error) { watched.delete(id); }
      }
      window.setTimeout(poll, 1000);
    }

    api("/api/v1/documents/?limit=100").then((page) => {
      body.replaceChildren();
      const docs = page.results || page.data || [];
      docs.slice().reverse().forEach(show);
      if (!docs.length) body.append(el("tr", { "data-empty": "1" }, [el("td", { colspan: "5", text: "No documents yet." })]));
      poll();
    }).catch((error) => body.replaceChildren(el("tr", {}, [el("td", { colspan: "5", class: "errors", text: error.message })])));

    const status = document.getElementById("upload-status");
    async function upload(files) {
      for (const file of files) {
        status.textContent = `Uploading ${file.name}…`;
        const data = new FormData();
        data.append("file", file);
        try {
          const doc = await api("/api/v1/documents/", { method: "POST", body: data });
          const empty = body.querySelector("tr[data-empty]");
          if (empty) empty.remove();
          show(doc);
          status.textContent = `${file.name}: ${doc.status}.`;
        } catch (error) {
          status.textContent = `${file.name}: ${error.message}`;
        }
      }
    }
    const input = document.getElementById("file-input");
    const zone = document.getElementById("dropzone");
    if (input) input.addEventListener("change", () => { upload([...input.files]); input.value = ""; });
    if (zone) {
      zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
      zone.addEventListener("dragleave", () => zone.classList.remove("over"));
      zone.addEventListener("drop", (event) => { event.preventDefault(); zone.classList.remove("over"); upload([...event.dataTransfer.files]); });
      zone.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); } });
    }

    const search = document.getElementById("search-form");
    const results = document.getElementById("search-results");
    search.addEventListener("submit", async (event) => {
      event.preventDefault();
      results.replaceChildren(el("li", { text: "Searching…" }));
      try {
        const found = await api("/api/v1/search/", { method: "POST", json: { query: search.query.value, top_k: 5 } });
        const hits = found.results || found.data || [];
        results.replaceChildren(...hits.map((hit) => el("li", { "data-passage": "1" }, [
          el("p", { text: hit.text }),
          el("p", { class: "meta", text: `${hit.document_title || hit.title || ""} · score ${Number(hit.score).toFixed(3)}` }),
        ])));
        if (!hits.length) results.append(el("li", { text: "Nothing matches." }));
      } catch (error) {
        results.replaceChildren(el("li", { class: "errors", text: error.message }));
      }
    });
  }

  // --- Playground ---------------------------------------------------------------------------

  function enhancePlayground() {
    const form = document.getElementById("playground");
    if (!form) return;
    const output = document.getElementById("pg-output");
    const usage = document.getElementById("pg-usage");
    const stop = document.getElementById("pg-stop");
    const send = document.getElementById("pg-send");
    const temperature = document.getElementById("pg-temperature");
    temperature.addEventListener("input", () => { document.getElementById("pg-temperature-value").textContent = temperature.value; });
    const prices = JSON.parse(form.dataset.prices || "{}");
    let controller = null;

    api("/v1/models").then((models) => {
      form.model.replaceChildren(...models.data.map((model) => el("option", { value: model.id, text: model.id })));
    }).catch((error) => { usage.textContent = error.message; });

    function cost(model, prompt, completion) {
      if (!prices.models) return "";
      const rates = prices.models[model] || prices.models["*"];
      const amount = (prompt * Number(rates[0]) + completion * Number(rates[1])) / 1000;
      return ` · about ${amount.toFixed(6)} ${prices.currency.toUpperCase()} at your plan's prices`;
    }

    stop.addEventListener("click", () => controller && controller.abort());
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      output.textContent = "";
      usage.textContent = "";
      const chat = form.mode.value === "chat";
      const payload = {
        model: form.model.value,
        temperature: Number(form.temperature.value),
        max_tokens: Number(form.max_tokens.value),
        stream: true,
        stream_options: { include_usage: true },
      };
      if (chat) payload.messages = [{ role: "user", content: form.prompt.value }];
      else payload.prompt = form.prompt.value;
      controller = new AbortController();
      send.disabled = true;
      stop.disabled = false;
      try {
        const response = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
          method: "POST",
          headers: { Authorization: "Bearer " + (await apiToken()), "Content-Type": "application/json" },
          body: JSON.stringify(payload),
          signal: controller.signal,
        });
        if (!response.ok) {
          const body = await response.json();
          throw new Error(body.error ? body.error.message : `The request failed (${response.status}).`);
        }
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const data = event.split("\n").filter((line) => line.startsWith("data: ")).map((line) => line.slice(6)).join("");
            if (!data || data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error) throw new Error(chunk.error.message);
            (chunk.choices || []).forEach((choice) => {
              output.textContent += chat ? (choice.delta && choice.delta.content) || "" : choice.text || "";
            });
            if (chunk.usage) {
              const u = chunk.usage;
              usage.textContent = `${u.prompt_tokens} prompt + ${u.completion_tokens} completion = ${u.total_tokens} tokens` + cost(payload.model, u.prompt_tokens, u.completion_tokens);
              usage.dataset.totalTokens = String(u.total_tokens);
            }
          }
        }
      } catch (error) {
        if (error.name !== "AbortError") usage.textContent = error.message;
      } finally {
        send.disabled = false;
        stop.disabled = true;
      }
    });
  }

  // --- Billing: a card, through Stripe.js (it never reaches the platform) ---------------------

  function enhanceCardForm() {
    const form = document.getElementById("card-form");
    if (!form || typeof window.Stripe !== "function") return;
    const stripe = window.Stripe(form.dataset.stripeKey);
    const card = stripe.elements().create("card");
    card.mount("#card-element");
    const status = document.getElementById("card-status");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      status.textContent = "Saving…";
      try {
        const intent = await api("/api/v1/billing/setup-intent/", { method: "POST" });
        const confirmed = await stripe.confirmCardSetup(intent.client_secret, { payment_method: { card } });
        if (confirmed.error) throw new Error(confirmed.error.message || "The card was refused.");
        await api("/api/v1/billing/payment-methods/", { method: "POST", json: { setup_intent: intent.setup_intent } });
        status.textContent = "Saved.";
        window.location.reload();
      } catch (error) {
        status.textContent = error.message;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    enhanceCommon();
    enhanceCardForm();
    enhanceUsage();
    enhanceDocuments();
    enhancePlayground();
  });
})();
