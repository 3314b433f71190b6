// The gallery's viewer: builds one row per image and one panel per model from window.KDEVAL_GALLERY
// (detections.js), and draws the boxes as SVG over each image. Every string from the data goes
// through textContent or setAttribute, never innerHTML, so names show as text and run nothing.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const PANEL_PX = 300; // a panel's width on screen, as --panel in the style: labels keep this size
  const data = window.KDEVAL_GALLERY;
  const gallery = document.getElementById("gallery");
  if (!data || !Array.isArray(data.images)) {
    gallery.textContent = "detections.js did not load: keep it next to index.html.";
    return;
  }
  const CORRECT = new Set(["correct", "crowd"]); // a crowd-region hit is not an error in COCO
  // read from the controls, which a browser may restore to a reader's last choice on reload
  const state = {
    threshold: Number(document.getElementById("threshold").value),
    gt: document.getElementById("show-gt").checked,
    models: data.models.map((_, m) => document.querySelector("input.show-model[data-model='" + m + "']").checked),
  };
  const panels = [];

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    return node;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function plural(count, noun) {
    return count + " " + noun + (count === 1 ? "" : "s");
  }

  function categoryName(id) {
    const name = data.categories[String(id)];
    return name === undefined ? "category " + id : name;
  }

  function buildRows() {
    const rows = document.createDocumentFragment();
    data.images.forEach((image) => {
      const row = element("section", "row");
      row.dataset.imageId = String(image.id);
      const heading = element("h2");
      heading.append(element("span", "image-id", "image " + image.id), " ",
        element("span", "file-name", image.file_name), " ",
        element("span", "objects", plural(image.gt.filter((g) => !g[5]).length, "object")), " ",
        element("span", "reason", image.reason));
      row.append(heading);
      const strip = element("div", "panels");
      data.models.forEach((model, m) => {
        const figure = element("figure", "panel");
        figure.dataset.model = String(m);
        const frame = element("div", "frame");
        frame.style.aspectRatio = image.width + " / " + image.height;
        const img = element("img");
        img.setAttribute("src", image.src);
        img.setAttribute("width", image.width);
        img.setAttribute("height", image.height);
        img.setAttribute("loading", "lazy");
        img.setAttribute("decoding", "async");
        img.setAttribute("alt", model + ": " + image.file_name);
        const overlay = svg("svg", { viewBox: "0 0 " + image.width + " " + image.height, class: "overlay" });
        frame.append(img, overlay);
        const caption = element("figcaption");
        const count = element("span", "count");
        caption.append(element("span", "model", model), " ", count);
        figure.append(frame, caption);
        strip.append(figure);
        panels.push({ image: image, model: m, overlay: overlay, count: count, drawn: -1, captioned: -1 });
      });
      row.append(strip);
      rows.append(row);
    });
    gallery.append(rows);
  }

  function label(x, y, text, unit, imageWidth) {
    // above the box, or just inside it when the box touches the image's top edge; moved left
    // rather than cut off at the right edge (0.62 em: a generous average width of a character)
    const size = 11 * unit;
    const width = 0.62 * size * text.length;
    const left = Math.max(0, Math.min(x + unit, imageWidth - width));
    const node = svg("text", { x: left, y: y > size ? y - 2 * unit : y + size, class: "label" });
    node.textContent = text;
    return node;
  }

  function shownDetections(panel) {
    // the panel's detections at or above the threshold (they are sorted by decreasing score)
    if (!state.models[panel.model]) return [];
    const detections = panel.image.detections[panel.model];
    let end = 0;
    while (end < detections.length && detections[end][4] >= state.threshold) end += 1;
    return detections.slice(0, end);
  }

  function drawPanel(panel) {
    const image = panel.image;
    const unit = image.width / PANEL_PX; // image pixels per screen pixel
    const layer = svg("g", { "font-size": 11 * unit, "stroke-width": 2.5 * unit });
    if (state.gt) {
      for (const g of image.gt) {
        const rect = svg("rect", { x: g[0], y: g[1], width: g[2], height: g[3], class: g[5] ? "gt crowd" : "gt" });
        const title = svg("title");
        title.textContent = "ground truth: " + categoryName(g[4]) + (g[5] ? " (crowd region)" : "");
        rect.append(title);
        layer.append(rect);
      }
    }
    for (const d of shownDetections(panel).reverse()) { // lowest first, so the surest boxes lie on top
      const verdict = data.verdicts[d[6]];
      const kind = CORRECT.has(verdict) ? "correct" : "wrong";
      const group = svg("g", { class: "box " + kind });
      group.dataset.verdict = verdict;
      group.append(svg("rect", { x: d[0], y: d[1], width: d[2], height: d[3], class: "det " + kind }));
      const text = categoryName(d[5]) + " " + d[4].toFixed(2);
      group.append(label(d[0], d[1], text, unit, image.width));
      const title = svg("title");
      title.textContent = text + " · " + verdict;
      group.append(title);
      layer.append(group);
    }
    panel.overlay.replaceChildren(layer);
    panel.drawn = version;
    if (panel.captioned !== version) updateCaption(panel);
  }

  function clearPanel(panel) {
    panel.overlay.replaceChildren();
    panel.drawn = -1;
  }

  // Only panels near the viewport hold boxes: a 500-image gallery at the slider's lower end has
  // over 100,000 detections, more SVG than a browser redraws at a slider's pace. Panels are drawn
  // as they scroll near and emptied as they leave; the counts cover every panel, from the data.
  const live = new Set();
  let version = 0; // of the state: a panel drawn or captioned at an older one is stale

  function countShown(panel) {
    let correct = 0;
    let wrong = 0;
    if (state.models[panel.model]) {
      for (const d of panel.image.detections[panel.model]) {
        if (d[4] < state.threshold) break;
        if (CORRECT.has(data.verdicts[d[6]])) correct += 1; else wrong += 1;
      }
    }
    return [correct, wrong];
  }

  function updateCaption(panel) {
    const [correct, wrong] = countShown(panel);
    panel.count.textContent = state.models[panel.model] ? correct + " correct · " + wrong + " wrong" : "hidden";
    panel.captioned = version;
  }

  function updateTotals() {
    // arithmetic over every panel; captions out of sight are updated when they come near
    let shown = 0;
    for (const panel of panels) {
      const [correct, wrong] = countShown(panel);
      shown += correct + wrong;
    }
    document.getElementById("threshold-value").textContent = state.threshold.toFixed(2);
    document.getElementById("drawn").textContent = shown + " detections shown";
    document.body.dataset.shown = String(shown);
  }

  function markDrawn() {
    document.body.dataset.drawn = String(document.querySelectorAll("rect.det").length);
  }

  function draw() {
    version += 1;
    for (const panel of live) drawPanel(panel);
    updateTotals();
    markDrawn();
  }

  let pending = false;
  function redraw() {
    // a slider fires many input events per frame: draw once per frame
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); });
  }

  document.getElementById("threshold").addEventListener("input", (event) => {
    state.threshold = Number(event.target.value);
    redraw();
  });
  document.getElementById("show-gt").addEventListener("change", (event) => {
    state.gt = event.target.checked;
    redraw();
  });
  for (const box of document.querySelectorAll("input.show-model")) {
    box.addEventListener("change", (event) => {
      state.models[Number(event.target.dataset.model)] = event.target.checked;
      redraw();
    });
  }

  buildRows();
  updateTotals();
  const panelOf = new Map(panels.map((panel) => [panel.overlay.parentNode, panel]));
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const panel = panelOf.get(entry.target);
      if (entry.isIntersecting) {
        live.add(panel);
        if (panel.drawn !== version) drawPanel(panel);
      } else if (live.delete(panel)) {
        clearPanel(panel);
      }
    }
    markDrawn();
    if (document.body.dataset.ready !== "true") {
      document.body.dataset.ready = "true";
      performance.mark("kdeval-gallery-ready");
    }
  }, { rootMargin: "800px 0px" });
  for (const frame of panelOf.keys()) observer.observe(frame);
})();
