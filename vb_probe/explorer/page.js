// vb-probe explorer: reads the JSON in #vb-data and draws the head grid, one caption on its image, and the
// attention of the selected head from the selected word. No network, no libraries. Strings from the data (words,
// keys, relations) only ever become text (textContent): nothing here parses markup, and the page's
// Content-Security-Policy would refuse an inline handler or a request if anything did.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("vb-data").textContent);
  const UNIT = data.unit || "region", UNITS = data.units || "regions";  // the family's image tokens, by name
  if (data.rule === "pointing") {  // the pointing rule in the key
    document.getElementById("rule-text").textContent = "its centre lies in a gold box";
  }
  for (const unit of document.querySelectorAll("#legend .unit")) unit.textContent = UNIT;
  const SVG = "http://www.w3.org/2000/svg";
  const state = { layer: 0, head: data.per_layer_best[0], caption: 0, word: null, mode: "entity", timer: null,
    contrast: "share", ground: null };
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

  // a large model's page keeps the maps of some heads only ("stored_heads"); every head's pick is kept
  const storedIndex = data.stored_heads ? new Map(data.stored_heads.map(([l, h], i) => [l * data.heads + h, i])) : null;
  function slotOf(layer, head) { return storedIndex ? storedIndex.get(layer * data.heads + head) : layer * data.heads + head; }

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

  const MODE_NAMES = { head_to_dependent: "head word → its dependent's region",
    dependent_to_head: "dependent → its head word's region" };
  function gridOf(mode) {  // each mode its own grid, best heads and baselines
    if (mode === "entity") {
      return { accuracy: data.accuracy, n: data.n, baselines: data.baselines, per_layer_best: data.per_layer_best,
        what: `entity grounding: ${data.n} phrases, split ${data.split}` };
    }
    const m = data.modes[mode], [relation, direction] = mode.split("/");
    return { ...m, what: `${relation}, ${MODE_NAMES[direction] || direction}: ${m.n} arcs of the captions shown` };
  }
  const grid = () => gridOf(state.mode);

  const MARKS = data.marks || {};
  const selectedHeads = new Set((MARKS.selected_heads || []).map(([l, h]) => l * data.heads + h));

  // the grid's geometry: cells as large as fit the panel (26 px for a 12 × 12 model, 8 px for 40 × 40), drawn at
  // their size in pixels (never scaled down), numbers 10 px tall on every `step`-th row and column so none touch
  function gridGeometry() {
    const size = Math.max(6, Math.min(36, Math.floor(320 / Math.max(data.heads, data.layers))));
    return { size, pad: 34, step: Math.ceil(14 / size) };
  }

  function drawGrid() {
    const g = grid(), svg = $("grid"), top = Math.max(...g.accuracy.flat().map(Number), 1e-6);
    const { size, pad, step } = gridGeometry();
    const width = pad + data.heads * size, height = pad + data.layers * size;
    svg.setAttribute("viewBox", `0 0 ${width + 8} ${height + 40}`);
    svg.setAttribute("width", width + 8);
    svg.setAttribute("height", height + 40);
    svg.replaceChildren();
    el("text", { x: pad + data.heads * size / 2, y: 10, "text-anchor": "middle", class: "axis" }, svg).textContent = "head";
    el("text", { x: 0, y: 0, transform: `translate(10 ${pad + data.layers * size / 2}) rotate(-90)`,
      "text-anchor": "middle", class: "axis" }, svg).textContent = "layer";
    for (let l = 0; l < data.layers; l++) {
      if (l % step === 0) {
        el("text", { x: pad - 4, y: pad + l * size + size / 2 + 3.5, "text-anchor": "end", class: "tick" }, svg)
          .textContent = l;
      }
      for (let h = 0; h < data.heads; h++) {
        const value = g.accuracy[l][h], x = pad + h * size, y = pad + l * size;
        const kept = !storedIndex || storedIndex.has(l * data.heads + h);
        const cell = el("rect", { x, y, width: size, height: size, fill: colour(Number(value), top), "data-layer": l,
          "data-head": h, "data-accuracy": value, "data-kept": kept }, svg);
        const notes = [kept ? "" : " (its map is not kept at this model's size: its pick only)",
          selectedHeads.has(l * data.heads + h) ? ` (${MARKS.selected_by})` : ""].join("");
        el("title", {}, cell).textContent = `L${l}H${h}: ${value}${notes}`;
        cell.addEventListener("click", () => { stop(); select(l, h); });
        if (storedIndex && kept) {  // a large model's page: which heads' maps it holds
          el("circle", { cx: x + size / 2, cy: y + size / 2, r: Math.max(1.5, size / 6), class: "kept" }, svg);
        }
        if (selectedHeads.has(l * data.heads + h)) {
          el("rect", { x: x + 1, y: y + 1, width: size - 2, height: size - 2, class: "chosen" }, svg);
        }
      }
    }
    for (let h = 0; h < data.heads; h += step) {
      el("text", { x: pad + h * size + size / 2, y: pad - 4, "text-anchor": "middle", class: "tick" }, svg).textContent = h;
    }
    const key = [];
    if (storedIndex) key.push(`white dots: the ${storedIndex.size} heads whose maps this page keeps (each layer's ` +
      "best and the top heads; every head's pick is kept)");
    if (selectedHeads.size) key.push(`orange squares: heads ${MARKS.selected_by}`);
    $("grid-key").textContent = key.join(" · ");
    // the colour bar: the ramp from 0 to the grid's best, the baselines marked on it
    const bar = height + 14, gradient = el("linearGradient", { id: "ramp" }, el("defs", {}, svg));
    for (let i = 0; i <= 4; i++) el("stop", { offset: `${i * 25}%`, "stop-color": colour(i / 4, 1) }, gradient);
    el("rect", { x: pad, y: bar, width: data.heads * size, height: 8, fill: "url(#ramp)" }, svg);
    el("text", { x: pad, y: bar + 20, "text-anchor": "middle" }, svg).textContent = "0";
    el("text", { x: pad + data.heads * size, y: bar + 20, "text-anchor": "end" }, svg).textContent = top.toFixed(3);
    for (const [name, value] of Object.entries(g.baselines)) {
      if (value === null || value === undefined || value > top) continue;
      const x = pad + data.heads * size * value / top;
      el("line", { x1: x, x2: x, y1: bar - 2, y2: bar + 10, class: `mark ${name}` }, svg);
    }
    const b = g.baselines, fmt = (v) => (v === undefined || v === null ? "n/a" : v.toFixed(3));
    const marks = [`random ${UNIT} ${fmt(b.random)}`];  // no detector (patches): no highest-confidence mark
    if (b.highest_confidence !== null && b.highest_confidence !== undefined) {
      marks.unshift(`highest-confidence ${UNIT} ${fmt(b.highest_confidence)}`);
    }
    $("scale").textContent = `colour: accuracy 0 to ${top.toFixed(3)} (yellow); marks on the bar: ` +
      `${marks.join(", ")} (${g.what})`;
  }

  function select(layer, head) {
    state.layer = layer; state.head = head;
    $("layer").value = layer;
    $("layer-label").textContent = `L${layer}`;
    for (const cell of document.querySelectorAll("#grid rect")) {
      cell.classList.toggle("selected", +cell.dataset.layer === layer && +cell.dataset.head === head);
    }
    $("head-info").replaceChildren(text("b", `L${layer}H${head}`, { id: "head-label" }),
      state.mode === "entity" ? " grounding accuracy " : ` ${state.mode.replace("/", " ")} accuracy `,
      text("b", String(grid().accuracy[layer][head]), { id: "head-accuracy" }));
    drawView();
  }

  function drawList(filter) {
    const list = $("captions");
    list.replaceChildren();
    let shown = 0;
    data.captions.forEach((c, i) => {
      if (filter && !c.words.join(" ").toLowerCase().includes(filter.toLowerCase())) return;
      const item = document.createElement("li");
      item.textContent = `${c.key}: ${c.words.join(" ")}`;
      item.dataset.caption = i;
      item.classList.toggle("selected", i === state.caption);
      item.addEventListener("click", () => { state.caption = i; state.word = null; drawList($("search").value); drawCaption(); });
      list.appendChild(item);
      shown += 1;
    });
    if (!shown) list.appendChild(text("li", `no caption contains “${filter}”`, { id: "no-match" }));
  }

  const arcsOf = (c) => c.arcs.filter((a) => `${a.relation}/${a.direction}` === state.mode);

  function queryWords(c) {
    if (state.mode === "entity") return new Set(c.phrases.map((p) => p.query));  // each phrase's query word, as probed
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
    if (state.mode === "entity") return c.phrases.find((p) => p.query === word);
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
    const slot = slotOf(state.layer, state.head);  // undefined: this head's map is not kept (a large model)
    const rows = entry && slot !== undefined ? rowsOf(state.caption, state.word) : null;
    const offset = (slot || 0) * regions;
    const map = rows ? rows.slice(offset, offset + regions) : [];
    const peak = rows ? Math.max(...map) : 0, low = rows && state.contrast === "stretch" ? Math.min(...map) : 0;
    c.regions.forEach((b, r) => {  // share: the map's peak darkest; stretch: its lowest to its highest, per map
      const weight = rows ? (rows[offset + r] - low) / ((peak - low) || 1) : 0;
      const region = el("rect", { class: "region", x: b[0], y: b[1], width: b[2] - b[0], height: b[3] - b[1],
        "fill-opacity": (0.65 * weight * weight).toFixed(3), "data-region": r }, view);  // squared: the peaks stand out
      if (rows) {
        el("title", {}, region).textContent = `${UNIT} ${r}: attention ${rows[offset + r].toFixed(3)} ` +
          `(its share of the word's attention on ${UNITS})`;
      }
    });
    drawUnseen(c, view);
    drawFixedPlace(c, view);
    if (!entry) { $("status").textContent = "Hover or click a highlighted word."; return; }
    const phrase = target(c, state.word);
    for (const g of phrase ? phrase.gold : []) el("rect", { class: "gold", x: g[0], y: g[1], width: g[2] - g[0], height: g[3] - g[1] }, view);
    const read = phrase && phrase.boxes && state.ground ? phrase.boxes[state.ground] : undefined;
    if (read) {  // the box vb-probe ground read from heads under the chosen setting, beside the gold
      const [x1, y1, x2, y2] = read.box;
      const box = el("rect", { class: `ground ${read.hit ? "hit" : "miss"}`, x: x1, y: y1, width: x2 - x1,
        height: y2 - y1 }, view);
      el("title", {}, box).textContent = `${state.ground} (${read.heads}): IoU ${read.iou.toFixed(3)} with the gold`;
    }
    const picked = entry.argmax[state.layer][state.head], b = c.regions[picked];
    const hit = (entry.hits[state.mode] || []).includes(picked);
    const pointing = data.rule === "pointing";  // patches: scored by the pointing rule
    el("rect", { class: `picked ${hit ? "hit" : "miss"}`, x: b[0], y: b[1], width: b[2] - b[0], height: b[3] - b[1],
      "data-region": picked, "data-picked": "true" }, view);
    $("status").replaceChildren(text("b", c.words[state.word]),
      ` (L${state.layer}H${state.head}): most-attended ${UNIT} `,
      text("b", String(picked), { id: "picked-region" }),
      ` ${hit ? (pointing ? "hits gold (its centre lies in a gold box)" : "hits gold (IoU ≥ 0.5)") : "misses gold"}` +
      `; dashed: gold boxes of “` +
      `${c.words.slice(phrase.first, phrase.last + 1).join(" ")}”` +
      (slot === undefined ? "; this head's map is not kept at this model's size (each layer's best and the top heads are)" : "") +
      (read ? `; box from heads (${state.ground}): IoU ${read.iou.toFixed(3)}${read.hit ? ", a hit" : ""}` : ""));
  }

  function drawUnseen(c, view) {  // the bands a centre crop cut away: hatched, "not seen", never "little attention"
    if (!c.seen) return;
    const [x1, y1, x2, y2] = c.seen, defs = el("defs", {}, view);
    const hatch = el("pattern", { id: "hatch", width: 12, height: 12, patternUnits: "userSpaceOnUse",
      patternTransform: "rotate(45)" }, defs);
    el("rect", { width: 12, height: 12, fill: "#bbb", "fill-opacity": 0.75 }, hatch);
    el("line", { x1: 0, y1: 0, x2: 0, y2: 12, stroke: "#555", "stroke-width": 4 }, hatch);
    const bands = [[0, 0, x1, c.height], [x2, 0, c.width - x2, c.height], [x1, 0, x2 - x1, y1],
      [x1, y2, x2 - x1, c.height - y2]].filter(([, , w, h]) => w > 0.5 && h > 0.5);
    for (const [x, y, w, h] of bands) {
      const band = el("rect", { class: "unseen", x, y, width: w, height: h, fill: "url(#hatch)" }, view);
      el("title", {}, band).textContent = "not seen by the model: its processor crops this part away";
      const along = h >= w, fits = along ? h > 120 && w > 14 : w > 120 && h > 14;
      if (fits) {  // written along the band where it is wide enough
        const cx = x + w / 2, cy = y + h / 2;
        el("text", { x: cx, y: cy, class: "unseen-label", "text-anchor": "middle", "dominant-baseline": "middle",
          "font-size": Math.min(16, (along ? w : h) * 0.7), transform: along ? `rotate(-90 ${cx} ${cy})` : "" },
        view).textContent = "not seen";
      }
    }
  }

  function drawFixedPlace(c, view) {  // the fixed-position baseline's place, on the part of the image the model sees
    const place = MARKS.fixed_place;
    if (!place) return;
    const [x1, y1, x2, y2] = c.seen || [0, 0, c.width, c.height];
    const x = x1 + place.column * (x2 - x1), y = y1 + place.row * (y2 - y1), arm = Math.max(c.width, c.height) / 40;
    const group = el("g", { class: "fixed-place" }, view);
    el("circle", { cx: x, cy: y, r: arm }, group);
    el("path", { d: `M${x - 1.6 * arm},${y}H${x + 1.6 * arm}M${x},${y - 1.6 * arm}V${y + 1.6 * arm}` }, group);
    el("title", {}, group).textContent = `fixed-position baseline: the place the heads pick most on ` +
      `${place.chosen_on}; a pointer fixed there scores ${Number(place.accuracy).toFixed(3)}`;
  }

  function stop() { if (state.timer) { clearInterval(state.timer); state.timer = null; $("play").textContent = "▶ best head of each layer"; } }

  function play() {
    if (state.timer) return stop();
    let layer = 0;
    select(0, grid().per_layer_best[0]);
    $("play").textContent = "■ stop";
    state.timer = setInterval(() => {
      layer = (layer + 1) % data.layers;
      select(layer, grid().per_layer_best[layer]);
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

  function exportName(suffix) {
    return `${data.captions[state.caption].key}_L${state.layer}H${state.head}.${suffix}`;
  }

  function exportPng() {  // the picture at its full size, the caption and the head written below it
    const c = data.captions[state.caption], image = new Image(), footer = 56;
    image.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = c.width; canvas.height = c.height + footer;
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(image, 0, 0, c.width, c.height);
      ctx.fillStyle = "#222"; ctx.font = "15px sans-serif";
      ctx.fillText(c.words.join(" "), 6, c.height + 22, c.width - 12);
      const word = state.word === null ? "" : `, from “${c.words[state.word]}”`;
      ctx.fillText(`L${state.layer}H${state.head} (${state.mode})${word}`, 6, c.height + 44, c.width - 12);
      download(exportName("png"), canvas.toDataURL("image/png"));
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
  mode.addEventListener("change", () => {
    stop();
    state.mode = mode.value; state.word = null;
    drawGrid();
    select(state.layer, grid().per_layer_best[state.layer]);  // this mode's best head of the layer
    drawCaption();
  });
  $("layer").max = data.layers - 1;
  $("layer").addEventListener("input", (e) => { stop(); select(+e.target.value, grid().per_layer_best[+e.target.value]); });
  $("play").addEventListener("click", play);
  $("export-svg").addEventListener("click", () => download(exportName("svg"),
    "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svgText())));
  $("export-png").addEventListener("click", exportPng);
  $("search").addEventListener("input", (e) => drawList(e.target.value));
  const skipped = Object.entries(data.skipped || {}).filter(([, n]) => n > 0)
    .map(([reason, n]) => `${n} ${reason.replaceAll("_", " ")}`);
  $("summary").textContent = `${data.captions.length} captions, ${data.layers} × ${data.heads} heads` +
    (skipped.length ? ` (skipped: ${skipped.join(", ")})` : "");
  $("contrast").addEventListener("change", (e) => { state.contrast = e.target.value; drawView(); });
  const settings = data.ground_settings || [];
  for (const setting of settings) {  // the ground run's settings, as text
    const option = document.createElement("option");
    option.value = setting;
    option.textContent = setting;
    $("ground").appendChild(option);
  }
  state.ground = settings.length ? settings[0] : null;
  $("ground-control").hidden = !settings.length;
  $("ground").addEventListener("change", (e) => { state.ground = e.target.value; drawView(); });
  const unseen = data.captions.some((c) => c.seen), keyOf = (id, shown) => { $(id).hidden = !shown; };
  keyOf("key-ground", settings.length > 0);
  keyOf("key-unseen", unseen);
  keyOf("key-fixed", Boolean(MARKS.fixed_place));
  drawGrid();
  drawList("");
  const [bestLayer, bestHead] = data.best_head || [0, data.per_layer_best[0]];
  select(bestLayer, bestHead);  // the page opens on the best head, wherever it is
  drawCaption();
})();
