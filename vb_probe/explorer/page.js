// vb-probe explorer: reads the JSON in #vb-data and draws the head grid, one caption on its image, and the
// attention of the selected head from the selected word. No network, no libraries. Strings from the data (words,
// keys, relations) only ever become text (textContent): nothing here parses markup, and the page's
// Content-Security-Policy would refuse an inline handler or a request if anything did.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("vb-data").textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const state = { layer: 0, head: data.per_layer_best[0], caption: 0, word: null, mode: "entity", timer: null };
  const $ = (id) => document.getElementById(id);
  const el = (name, attrs, parent) => {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  };
  const text = (name, content, attrs) => {  // an HTML element holding text: data never becomes markup
    const node = document.createElement(name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    node.textContent = content;
    return node;
  };
  const decoded = new Map();  // "<caption>:<word>" → Float32Array [layer][head][region], rows re-normalised

  function rowsOf(ci, word) {
    const key = ci + ":" + word;
    if (!decoded.has(key)) {
      const entry = data.captions[ci].queries[word];
      const bytes = Uint8Array.from(atob(entry.rows), (c) => c.charCodeAt(0));
      const regions = data.captions[ci].regions.length;
      const rows = new Float32Array(bytes.length);
      for (let start = 0; start < bytes.length; start += regions) {  // each row sums to one again
        let total = 0;
        for (let r = 0; r < regions; r++) total += bytes[start + r];
        for (let r = 0; r < regions; r++) rows[start + r] = total ? bytes[start + r] / total : 0;
      }
      decoded.set(key, rows);
    }
    return decoded.get(key);
  }

  function colour(value, top) {  // a viridis-like ramp from dark blue to yellow
    const t = Math.max(0, Math.min(1, value / (top || 1)));
    const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    const x = t * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
    const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  const top = Math.max(...data.accuracy.flat().map(Number));

  function drawGrid() {
    const grid = $("grid"), size = 24, pad = 22;
    grid.setAttribute("viewBox", `0 0 ${pad + data.heads * size} ${pad + data.layers * size}`);
    grid.replaceChildren();
    for (let l = 0; l < data.layers; l++) {
      el("text", { x: 2, y: pad + l * size + 15 }, grid).textContent = l;
      for (let h = 0; h < data.heads; h++) {
        const cell = el("rect", { x: pad + h * size, y: pad + l * size, width: size, height: size,
          fill: colour(Number(data.accuracy[l][h]), top), "data-layer": l, "data-head": h }, grid);
        el("title", {}, cell).textContent = `L${l}H${h}: ${data.accuracy[l][h]}`;
        cell.addEventListener("click", () => { stop(); select(l, h); });
      }
    }
    for (let h = 0; h < data.heads; h++) el("text", { x: pad + h * size + 8, y: 14 }, grid).textContent = h;
    const b = data.baselines;
    $("scale").textContent = `colour: accuracy 0 to ${top.toFixed(3)} (yellow); highest-confidence region ` +
      `${b.highest_confidence !== undefined ? b.highest_confidence.toFixed(3) : "n/a"}, random ${b.random.toFixed(3)}` +
      ` (n = ${data.n} phrases, split ${data.split})`;
  }

  function select(layer, head) {
    state.layer = layer; state.head = head;
    $("layer").value = layer;
    $("layer-label").textContent = `L${layer}`;
    for (const cell of document.querySelectorAll("#grid rect")) {
      cell.classList.toggle("selected", +cell.dataset.layer === layer && +cell.dataset.head === head);
    }
    $("head-info").replaceChildren(text("b", `L${layer}H${head}`, { id: "head-label" }), " grounding accuracy ",
      text("b", String(data.accuracy[layer][head]), { id: "head-accuracy" }));
    drawView();
  }

  function drawList(filter) {
    const list = $("captions");
    list.replaceChildren();
    data.captions.forEach((c, i) => {
      if (filter && !c.words.join(" ").toLowerCase().includes(filter.toLowerCase())) return;
      const item = document.createElement("li");
      item.textContent = `${c.key}: ${c.words.join(" ")}`;
      item.dataset.caption = i;
      item.classList.toggle("selected", i === state.caption);
      item.addEventListener("click", () => { state.caption = i; state.word = null; drawList($("search").value); drawCaption(); });
      list.appendChild(item);
    });
  }

  const arcsOf = (c) => c.arcs.filter((a) => `${a.relation}/${a.direction}` === state.mode);

  function queryWords(c) {
    if (state.mode === "entity") return new Set(c.phrases.map((p) => p.last));
    return new Set(arcsOf(c).map((a) => a.query));
  }

  function drawCaption() {
    const c = data.captions[state.caption], box = $("caption"), queries = queryWords(c);
    box.replaceChildren();
    c.words.forEach((word, i) => {
      const span = document.createElement("span");
      span.textContent = word;
      span.dataset.word = i;
      if (c.phrases.some((p) => p.first <= i && i <= p.last)) span.classList.add("phrase");
      if (queries.has(i) && c.queries[i] !== undefined) {
        span.classList.add("query");
        span.addEventListener("mouseenter", () => { state.word = i; drawView(); });
        span.addEventListener("click", () => { state.word = i; drawView(); });
      }
      box.appendChild(span);
      box.appendChild(document.createTextNode(" "));
    });
    drawArcs();
    drawView();
  }

  function drawArcs() {
    const svg = $("arcs"), c = data.captions[state.caption];
    svg.replaceChildren();
    if (state.mode === "entity") return;
    const spans = [...document.querySelectorAll("#caption span")], origin = svg.getBoundingClientRect();
    for (const arc of arcsOf(c)) {
      const a = spans[arc.head].getBoundingClientRect(), b = spans[arc.dependent].getBoundingClientRect();
      const x1 = a.left + a.width / 2 - origin.left, x2 = b.left + b.width / 2 - origin.left;
      el("path", { d: `M${x1},38 C${x1},4 ${x2},4 ${x2},38` }, svg);
      el("text", { x: (x1 + x2) / 2 - 12, y: 12 }, svg).textContent = arc.relation;
    }
  }

  function target(c, word) {  // the phrase whose gold boxes the word's attention should land on
    if (state.mode === "entity") return c.phrases.find((p) => p.last === word);
    const arc = arcsOf(c).find((a) => a.query === word);
    return arc ? c.phrases[arc.phrase] : undefined;
  }

  function drawView() {
    const c = data.captions[state.caption], view = $("view");
    view.setAttribute("viewBox", `0 0 ${c.width} ${c.height}`);
    view.replaceChildren();
    if (c.picture) el("image", { href: c.picture, x: 0, y: 0, width: c.width, height: c.height }, view);
    else el("rect", { x: 0, y: 0, width: c.width, height: c.height, fill: "#eee" }, view);
    for (const span of document.querySelectorAll("#caption span")) span.classList.toggle("active", +span.dataset.word === state.word);
    const entry = state.word === null ? undefined : c.queries[state.word];
    const regions = c.regions.length;
    const rows = entry ? rowsOf(state.caption, state.word) : null;
    const offset = (state.layer * data.heads + state.head) * regions;
    const peak = rows ? Math.max(...rows.slice(offset, offset + regions)) : 0;
    c.regions.forEach((b, r) => {
      const weight = rows ? rows[offset + r] / (peak || 1) : 0;
      el("rect", { class: "region", x: b[0], y: b[1], width: b[2] - b[0], height: b[3] - b[1],
        "fill-opacity": (0.65 * weight * weight).toFixed(3), "data-region": r }, view);  // squared: the peaks stand out
    });
    if (!entry) { $("status").textContent = "Hover or click a highlighted word."; return; }
    const phrase = target(c, state.word);
    for (const g of phrase ? phrase.gold : []) el("rect", { class: "gold", x: g[0], y: g[1], width: g[2] - g[0], height: g[3] - g[1] }, view);
    const picked = entry.argmax[state.layer][state.head], b = c.regions[picked];
    const hit = (entry.hits[state.mode] || []).includes(picked);
    el("rect", { class: `picked ${hit ? "hit" : "miss"}`, x: b[0], y: b[1], width: b[2] - b[0], height: b[3] - b[1],
      "data-region": picked, "data-picked": "true" }, view);
    $("status").replaceChildren(text("b", c.words[state.word]),
      ` (L${state.layer}H${state.head}): most-attended region `, text("b", String(picked), { id: "picked-region" }),
      ` ${hit ? "hits gold (IoU ≥ 0.5)" : "misses gold"}; dashed: gold boxes of “` +
      `${c.words.slice(phrase.first, phrase.last + 1).join(" ")}”`);
  }

  function stop() { if (state.timer) { clearInterval(state.timer); state.timer = null; $("play").textContent = "▶ best head of each layer"; } }

  function play() {
    if (state.timer) return stop();
    let layer = 0;
    select(0, data.per_layer_best[0]);
    $("play").textContent = "■ stop";
    state.timer = setInterval(() => {
      layer = (layer + 1) % data.layers;
      select(layer, data.per_layer_best[layer]);
    }, 900);
  }

  function download(name, href) {
    const link = document.createElement("a");
    link.download = name; link.href = href;
    document.body.appendChild(link); link.click(); link.remove();
  }

  function svgText() {
    const copy = $("view").cloneNode(true);
    const style = document.createElementNS(SVG, "style");
    style.textContent = [...document.styleSheets].flatMap((s) => [...s.cssRules].map((r) => r.cssText))
      .filter((t) => t.startsWith("#view")).join("\n");
    copy.insertBefore(style, copy.firstChild);
    return new XMLSerializer().serializeToString(copy);
  }

  function exportPng() {
    const c = data.captions[state.caption], image = new Image();
    image.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = c.width; canvas.height = c.height;
      canvas.getContext("2d").drawImage(image, 0, 0);
      download(`${c.key}_L${state.layer}H${state.head}.png`, canvas.toDataURL("image/png"));
    };
    image.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svgText());
  }

  const mode = $("mode");
  for (const view of data.views) {
    const [relation, direction] = view.split("/");
    const option = document.createElement("option");
    option.value = view;
    option.textContent = `${relation}: ${direction === "head_to_dependent" ? "head word → its dependent's region"
      : "dependent → its head word's region"}`;
    mode.appendChild(option);
  }
  mode.addEventListener("change", () => { state.mode = mode.value; state.word = null; drawCaption(); });
  $("layer").max = data.layers - 1;
  $("layer").addEventListener("input", (e) => { stop(); select(+e.target.value, data.per_layer_best[+e.target.value]); });
  $("play").addEventListener("click", play);
  $("export-svg").addEventListener("click", () => download(`${data.captions[state.caption].key}.svg`,
    "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svgText())));
  $("export-png").addEventListener("click", exportPng);
  $("search").addEventListener("input", (e) => drawList(e.target.value));
  const skipped = Object.entries(data.skipped || {}).filter(([, n]) => n > 0)
    .map(([reason, n]) => `${n} ${reason.replaceAll("_", " ")}`);
  $("summary").textContent = `${data.captions.length} captions, ${data.layers} × ${data.heads} heads` +
    (skipped.length ? ` (skipped: ${skipped.join(", ")})` : "");
  drawGrid();
  drawList("");
  select(0, data.per_layer_best[0]);
  drawCaption();
})();
