// The built-in viewer: one canvas, the series of a study read through our DICOMweb.
//
// First image first: the instance list (QIDO-RS), then the first instance's metadata and
// frame side by side; only then the series metadata and every other frame, several
// requests in flight, nearest to the image on screen first.

import { first, getFrame, getJSON, number, personOrText, text, values } from "./dicomweb.js";
import { Frame, paletteOf, pixelModule } from "./pixels.js";
import { streamSeries } from "./series.js";

const config = JSON.parse(document.getElementById("viewer-config").textContent);
const T = config.strings;
const ROOT = config.dicomweb;
const IN_FLIGHT = 6; // what a browser opens to one host over HTTP/1.1
// While the series streams in, single frames are asked for only around the image shown
// (for a jump ahead of the stream), a few at a time.
const NEAR_BEHIND = 3;
const NEAR_AHEAD = 8;
const IN_FLIGHT_WHILE_STREAMING = 2;

const $ = (id) => document.getElementById(id);
const canvas = $("image");
const context = canvas.getContext("2d");
const offscreen = document.createElement("canvas");
const offContext = offscreen.getContext("2d", { willReadFrequently: true });

const state = {
  series: [], // QIDO-RS series of the study
  current: null, // {uid, modality, images: [...], ...}
  index: 0,
  window: null, // {center, width}
  invert: false,
  view: null, // {scale, x, y}: image pixel -> CSS pixel
  tool: "window",
  measurements: new Map(), // image index -> [{a: [x, y], b: [x, y]}]
  drawing: null,
  cine: null,
  pointer: null,
  firstImageMs: null,
  allLoadedMs: null,
};

// --- Loading -----------------------------------------------------------------------------

const studyUrl = `${ROOT}studies/${config.study}`;

async function start() {
  buildToolbar();
  $("help").textContent = T.help;
  // The page names the series to open: its instances are asked for at once, beside the series list.
  const seriesList = getJSON(`${studyUrl}/series`).then((list) => {
    state.series = list.sort((a, b) => number(a, "00200011", 1e9) - number(b, "00200011", 1e9));
    buildStrip();
    if (state.current && !state.current.modality) {
      state.current.modality = modalityOf(state.current.uid);
      buildPresets();
    }
  });
  if (config.series) await loadSeries(config.series, config.instances);
  await seriesList;
  if (!config.series) {
    if (!state.series.length) return message(T.no_images);
    await loadSeries(first(state.series[0], "0020000E"));
  }
}

function modalityOf(seriesUid) {
  return first(state.series.find((s) => first(s, "0020000E") === seriesUid), "00080060", "");
}

// ``listed``: [[SOP Instance UID, Instance Number, frames], ...] when the page brought them.
async function loadSeries(seriesUid, listed = null) {
  if (state.current) state.current.controller.abort();
  stopCine();
  const controller = new AbortController();
  const series = {
    uid: seriesUid,
    url: `${studyUrl}/series/${seriesUid}`,
    controller,
    images: [],
    buffers: new Map(), // image index -> ArrayBuffer of the raw frame
    frames: new Map(), // image index -> Frame
    inFlight: new Set(),
    failed: new Set(),
    metadata: new Map(), // SOP Instance UID -> dicom+json
    metaInFlight: new Set(),
    palettes: new Map(),
    loaded: 0,
    started: performance.now(),
  };
  state.current = series;
  state.index = 0;
  state.window = null;
  state.view = null;
  state.drawn = null;
  state.measurements = new Map();
  message("");
  markStrip();
  if (!listed) {
    const found = await getJSON(`${series.url}/instances`);
    if (state.current !== series) return;
    listed = found.map((i) => [first(i, "00080018"), number(i, "00200013", 0), number(i, "00280008", 1) || 1]);
    listed.sort((a, b) => a[1] - b[1]);
  }
  for (const [sop, , count] of listed) {
    for (let f = 1; f <= count; f++) {
      series.images.push({ sop, frame: f, frames: count, url: `${series.url}/instances/${sop}/frames/${f}` });
    }
  }
  if (!series.images.length) return message(T.no_images);
  series.modality = modalityOf(seriesUid);
  const slider = $("slider");
  slider.max = series.images.length;
  slider.value = 1;
  buildPresets();
  // The first instance's own metadata: a small request, not the whole series'.
  const head = series.images[0];
  const [meta] = await Promise.all([
    getJSON(`${series.url}/instances/${head.sop}/metadata`).then((items) => series.metadata.set(head.sop, items[0])),
    fetchImage(series, 0),
  ]);
  if (state.current !== series) return;
  await draw();
  if (state.current !== series) return;
  if (!state.drawn) return message(T.error);
  state.firstImageMs = performance.now();
  performance.mark("viewer-first-image");
  document.body.dataset.firstImage = "shown";
  streamAll(series);
  pump(series);
  showThumbnails();
  return meta;
}

// Every header of the series, once every frame is in: overlays and the tag browser of
// each image until then come from its own instance's metadata, asked for when shown.
function loadSeriesMetadata(series) {
  getJSON(`${series.url}/metadata`)
    .then((items) => {
      if (state.current !== series) return;
      for (const item of items) series.metadata.set(first(item, "00080018"), item);
      series.frames.clear(); // decoded again with each instance's own attributes
      draw();
      if (!$("tags").hidden) showTags();
    })
    .catch((error) => console.warn("series metadata", error));
}

function ensureMetadata(series, index) {
  const sop = series.images[index].sop;
  if (series.metadata.has(sop) || series.metaInFlight.has(sop)) return;
  series.metaInFlight.add(sop);
  getJSON(`${series.url}/instances/${sop}/metadata`)
    .then((items) => {
      series.metadata.set(sop, items[0]);
      series.images.forEach((image, i) => image.sop === sop && series.frames.delete(i));
      if (state.current === series && series.images[state.index].sop === sop) {
        draw();
        if (!$("tags").hidden) showTags();
      }
    })
    .catch((error) => console.warn("metadata", sop, error))
    .finally(() => series.metaInFlight.delete(sop));
}

// The rest of the series in one retrieve; should it fail, frame by frame as before.
function streamAll(series) {
  if (series.buffers.size === series.images.length) return;
  const bySop = new Map();
  series.images.forEach((image, i) => {
    if (!bySop.has(image.sop)) bySop.set(image.sop, []);
    bySop.get(image.sop).push(i);
  });
  series.streaming = true;
  streamSeries(series.url, series.controller.signal, (sop, buffer) => {
    const indexes = bySop.get(sop) || [];
    const size = buffer.byteLength / Math.max(1, indexes.length);
    indexes.forEach((index, k) => {
      if (series.buffers.has(index)) return;
      series.buffers.set(index, indexes.length > 1 ? buffer.slice(k * size, (k + 1) * size) : buffer);
      series.streamed = (series.streamed || 0) + 1;
      if (index === state.index && state.current === series) draw();
    });
    progress(series);
  })
    .catch((error) => {
      if (error.name !== "AbortError") console.warn("series retrieve; frames one by one instead", error);
    })
    .finally(() => {
      series.streaming = false;
      pump(series);
    });
}

async function fetchImage(series, index) {
  series.inFlight.add(index);
  try {
    const buffer = await getFrame(series.images[index].url, series.controller.signal);
    if (!series.buffers.has(index)) series.buffers.set(index, buffer); // the stream may have brought it
    progress(series);
    if (index === state.index && state.firstImageMs !== null && state.current === series) draw();
  } catch (error) {
    if (error.name !== "AbortError") {
      series.failed.add(index);
      console.warn("frame", series.images[index].url, error);
    }
  } finally {
    series.inFlight.delete(index);
  }
}

// Keep IN_FLIGHT requests going, the nearest missing image to the one shown first.
function pump(series) {
  if (state.current !== series || series.controller.signal.aborted) return;
  while (series.inFlight.size < (series.streaming ? IN_FLIGHT_WHILE_STREAMING : IN_FLIGHT)) {
    const next = nearestMissing(series);
    if (next === null) break;
    fetchImage(series, next).then(() => pump(series));
  }
}

function nearestMissing(series) {
  const n = series.images.length;
  const want = (i) => i >= 0 && i < n && !series.buffers.has(i) && !series.inFlight.has(i) && !series.failed.has(i);
  // Ahead of the shown image twice as much as behind: people scroll forward.
  if (series.streaming) {
    for (let d = 0; d <= NEAR_AHEAD; d++) {
      if (want(state.index + d)) return state.index + d;
      if (d <= NEAR_BEHIND && want(state.index - d)) return state.index - d;
    }
    return null;
  }
  for (let d = 0; d < n; d++) {
    if (want(state.index + d)) return state.index + d;
    if (d % 2 === 0 && want(state.index - d / 2)) return state.index - d / 2;
  }
  for (let i = 0; i < n; i++) if (want(i)) return i;
  return null;
}

function progress(series) {
  const total = series.images.length;
  series.loaded = series.buffers.size;
  $("progress").textContent = series.loaded < total ? `${T.loading} ${series.loaded}/${total}` : `${total}/${total} ${T.loaded}`;
  document.body.dataset.loaded = String(series.loaded);
  if (series.loaded === total && !series.complete) {
    series.complete = true;
    if (state.allLoadedMs === null) {
      state.allLoadedMs = performance.now();
      performance.mark("viewer-all-loaded");
    }
    loadSeriesMetadata(series);
  }
}

function metadataOf(series, index) {
  const image = series.images[index];
  return series.metadata.get(image.sop) || series.metadata.get(series.images[0].sop);
}

async function frameAt(series, index) {
  let frame = series.frames.get(index);
  if (frame) return frame;
  const buffer = series.buffers.get(index);
  const item = metadataOf(series, index);
  if (!buffer || !item) return null;
  const module = pixelModule(item);
  let palette = null;
  if (module.photometric === "PALETTE COLOR") {
    const sop = series.metadata.has(series.images[index].sop) ? series.images[index].sop : series.images[0].sop;
    if (!series.palettes.has(sop)) series.palettes.set(sop, paletteOf(item));
    palette = await series.palettes.get(sop);
  }
  frame = new Frame(buffer, module, palette);
  series.frames.set(index, frame);
  return frame;
}

// --- Drawing -----------------------------------------------------------------------------

let drawing = Promise.resolve();
function draw() {
  drawing = drawing.then(drawNow).catch((error) => {
    console.error(error);
    message(T.error);
  });
  return drawing;
}

async function drawNow() {
  const series = state.current;
  if (!series) return;
  if (series.images.length) ensureMetadata(series, state.index);
  resizeCanvas();
  const frame = await frameAt(series, state.index);
  const ratio = window.devicePixelRatio || 1;
  context.setTransform(1, 0, 0, 1, 0, 0);
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
  if (frame) {
    if (!state.window) state.window = frame.defaultWindow();
    if (offscreen.width !== frame.width || offscreen.height !== frame.height) {
      offscreen.width = frame.width;
      offscreen.height = frame.height;
    }
    if (!state.view) fit(frame);
    const pixels = offContext.createImageData(frame.width, frame.height);
    frame.render(pixels, { ...state.window, invert: state.invert });
    offContext.putImageData(pixels, 0, 0);
    const { scale, x, y } = state.view;
    context.setTransform(ratio * scale, 0, 0, ratio * scale, ratio * x, ratio * y);
    context.imageSmoothingEnabled = scale < 1;
    context.drawImage(offscreen, 0, 0);
    state.drawn = { index: state.index, frame };
    drawMeasurements(frame, ratio);
  }
  overlays(series, frame);
}

function resizeCanvas() {
  const ratio = window.devicePixelRatio || 1;
  const box = canvas.parentElement.getBoundingClientRect();
  const w = Math.max(1, Math.round(box.width * ratio));
  const h = Math.max(1, Math.round(box.height * ratio));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
}

function stageSize() {
  const box = canvas.getBoundingClientRect();
  return { width: box.width, height: box.height };
}

function fit(frame = state.drawn && state.drawn.frame) {
  const size = frame || currentSize();
  if (!size) return;
  const { width, height } = stageSize();
  const scale = Math.min(width / size.width, height / size.height);
  state.view = { scale, x: (width - size.width * scale) / 2, y: (height - size.height * scale) / 2 };
}

function currentSize() {
  const series = state.current;
  const item = series && metadataOf(series, state.index);
  if (!item) return null;
  const m = pixelModule(item);
  return { width: m.columns, height: m.rows };
}

function actualSize() {
  const size = currentSize();
  if (!size) return;
  const { width, height } = stageSize();
  const ratio = window.devicePixelRatio || 1;
  const scale = 1 / ratio; // one image pixel per device pixel
  state.view = { scale, x: (width - size.width * scale) / 2, y: (height - size.height * scale) / 2 };
}

function zoomBy(factor, cx, cy) {
  const v = state.view;
  if (!v) return;
  const { width, height } = stageSize();
  cx = cx === undefined ? width / 2 : cx;
  cy = cy === undefined ? height / 2 : cy;
  const scale = Math.min(64, Math.max(0.05, v.scale * factor));
  const k = scale / v.scale;
  state.view = { scale, x: cx - (cx - v.x) * k, y: cy - (cy - v.y) * k };
}

function toImage(clientX, clientY) {
  const box = canvas.getBoundingClientRect();
  const { scale, x, y } = state.view;
  return [(clientX - box.left - x) / scale, (clientY - box.top - y) / scale];
}

function toClient(ix, iy) {
  const box = canvas.getBoundingClientRect();
  const { scale, x, y } = state.view;
  return [box.left + x + ix * scale, box.top + y + iy * scale];
}

// --- Measurements ------------------------------------------------------------------------

function lengthOf(m, frame) {
  const [rowSpacing, columnSpacing] = frame.module.spacing;
  const dx = m.b[0] - m.a[0];
  const dy = m.b[1] - m.a[1];
  if (rowSpacing > 0 && columnSpacing > 0) {
    return { value: Math.hypot(dx * columnSpacing, dy * rowSpacing), unit: "mm" };
  }
  return { value: Math.hypot(dx, dy), unit: "px" };
}

function drawMeasurements(frame, ratio) {
  const list = [...(state.measurements.get(state.index) || []), ...(state.drawing ? [state.drawing] : [])];
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  const { scale, x, y } = state.view;
  const labels = [];
  for (const m of list) {
    const a = [x + m.a[0] * scale, y + m.a[1] * scale];
    const b = [x + m.b[0] * scale, y + m.b[1] * scale];
    context.strokeStyle = "#ffd400";
    context.lineWidth = 1.5;
    context.beginPath();
    context.moveTo(...a);
    context.lineTo(...b);
    context.stroke();
    for (const p of [a, b]) {
      context.beginPath();
      context.arc(p[0], p[1], 3, 0, 2 * Math.PI);
      context.stroke();
    }
    const { value, unit } = lengthOf(m, frame);
    const label = `${value.toFixed(1)} ${unit}`;
    labels.push(label);
    context.font = "13px system-ui, sans-serif";
    context.fillStyle = "#ffd400";
    context.fillText(label, b[0] + 6, b[1] - 6);
  }
  // The labels also in the page, readable by people with screen readers (and by tests).
  $("measurements").textContent = labels.join(" · ");
}

// --- Overlays ----------------------------------------------------------------------------

function line(field, label, value) {
  if (value === "" || value === undefined || value === null) return "";
  const div = document.createElement("div");
  div.dataset.field = field;
  div.textContent = label ? `${label} ${value}` : value;
  return div.outerHTML;
}

function dicomDate(v) {
  const s = String(v || "");
  return s.length === 8 ? `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6)}` : s;
}

function overlays(series, frame) {
  const item = metadataOf(series, state.index) || {};
  const image = series.images[state.index];
  const qido = state.series.find((s) => first(s, "0020000E") === series.uid) || {};
  $("overlay-tl").innerHTML =
    line("patient", "", personOrText(first(item, "00100010"))) +
    line("patient-id", "", text(item, "00100020")) +
    line("birth", "", [dicomDate(first(item, "00100030")), text(item, "00100040")].filter(Boolean).join(" "));
  $("overlay-tr").innerHTML =
    line("study", "", [dicomDate(first(item, "00080020")), text(item, "00081030")].filter(Boolean).join(" ")) +
    line("series", T.series, [first(item, "00200011", first(qido, "00200011", "")), text(item, "0008103E") || text(qido, "0008103E")].join(" ").trim()) +
    line("modality", "", text(item, "00080060"));
  const location = number(item, "00201041");
  const position = values(item, "00200032");
  const sliceText = Number.isFinite(location) ? `${location.toFixed(2)} mm` : position.length === 3 ? `z ${Number(position[2]).toFixed(2)} mm` : "";
  $("overlay-bl").innerHTML =
    line("image", T.image, `${state.index + 1}/${series.images.length}`) +
    (image.frames > 1 ? line("frame", "", `${image.frame}/${image.frames}`) : "") +
    line("slice", T.slice, sliceText);
  let value = "";
  if (frame && state.pointer) {
    const [ix, iy] = state.pointer.map(Math.floor);
    const v = frame.valueAt(ix, iy);
    if (v !== null) value = `(${ix}, ${iy}) ${Number.isInteger(v) ? v : v.toFixed(2)}`;
  }
  const w = state.window;
  $("overlay-br").innerHTML =
    line("value", "", value) +
    (frame && !frame.color && w ? line("window", T.window, `${Math.round(w.width)}/${Math.round(w.center)}`) : "") +
    (state.view ? line("zoom", T.zoom, `${Math.round(state.view.scale * 100)}%`) : "");
  document.title = `${personOrText(first(item, "00100010")) || T.title} · ${T.title}`;
}

function message(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

// --- Navigation --------------------------------------------------------------------------

function go(index) {
  const series = state.current;
  if (!series || !series.images.length) return;
  const n = series.images.length;
  index = Math.max(0, Math.min(n - 1, index));
  if (index === state.index) return;
  state.index = index;
  $("slider").value = index + 1;
  draw();
  pump(series);
}

function startCine() {
  const series = state.current;
  if (!series) return;
  const item = metadataOf(series, state.index);
  const rate = number(item, "00180040") || (number(item, "00181063") ? 1000 / number(item, "00181063") : 0) || 15;
  state.cine = setInterval(() => {
    const next = (state.index + 1) % series.images.length;
    if (series.buffers.has(next)) {
      state.index = next - 1; // go() ignores a move to where we are
      go(next);
    }
  }, 1000 / Math.min(60, rate));
  $("cine").textContent = T.stop;
  $("cine").setAttribute("aria-pressed", "true");
}

function stopCine() {
  if (state.cine) clearInterval(state.cine);
  state.cine = null;
  const button = $("cine");
  if (button) {
    button.textContent = T.cine;
    button.setAttribute("aria-pressed", "false");
  }
}

function setPreset(preset) {
  if (preset) state.window = { center: preset.center, width: preset.width };
  else state.window = null; // the file's own, or the values' range
  draw();
}

function presets() {
  const series = state.current;
  return (series && config.presets[series.modality]) || [];
}

// --- Toolbar, strip, tag browser ---------------------------------------------------------

function button(id, label, onClick, title = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.id = id;
  b.textContent = label;
  if (title) b.title = title;
  b.addEventListener("click", (event) => {
    onClick(event);
    canvas.focus();
  });
  return b;
}

function setTool(tool) {
  state.tool = tool;
  for (const b of $("tools").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
}

function buildToolbar() {
  const tools = $("tools");
  for (const [tool, label, key] of [["window", T.tool_window, "W"], ["pan", T.tool_pan, "P"], ["zoom", T.tool_zoom, "Z"], ["measure", T.tool_measure, "M"]]) {
    const b = button(`tool-${tool}`, label, () => setTool(tool), key);
    b.dataset.tool = tool;
    tools.append(b);
  }
  setTool("window");
  const actions = $("actions");
  actions.append(
    button("fit", T.fit, () => { fit(); draw(); }, "F"),
    button("actual-size", T.actual_size, () => { actualSize(); draw(); }),
    button("reset", T.reset, reset, "R"),
    button("invert", T.invert, () => { state.invert = !state.invert; draw(); }, "I"),
    button("cine", T.cine, () => (state.cine ? stopCine() : startCine()), "C"),
    button("clear", T.clear, () => { state.measurements.delete(state.index); draw(); }),
    button("show-tags", T.tags, toggleTags, "T"),
  );
  const out = document.createElement("span");
  out.id = "measurements";
  out.className = "measurements";
  out.setAttribute("aria-live", "polite");
  actions.append(out);
  $("tags-close").textContent = T.close;
  $("tags-close").addEventListener("click", toggleTags);
  $("tag-filter").placeholder = T.filter;
  $("tag-filter").addEventListener("input", showTags);
  const heads = document.querySelectorAll("#tags thead th");
  [T.tag, T.name, T.vr, T.value].forEach((label, i) => (heads[i].textContent = label));
}

function buildPresets() {
  const box = $("presets");
  box.replaceChildren();
  const list = presets();
  list.forEach((p, i) => box.append(button(`preset-${p.key}`, T[`preset_${p.key}`] || p.key, () => setPreset(p), String(i + 1))));
  box.append(button("preset-default", T.preset_default, () => setPreset(null), "0"));
}

function reset() {
  state.window = null;
  state.invert = false;
  state.view = null;
  state.measurements.delete(state.index);
  draw();
}

function buildStrip() {
  const strip = $("strip");
  strip.replaceChildren();
  for (const s of state.series) {
    const uid = first(s, "0020000E");
    const item = document.createElement("button");
    item.type = "button";
    item.className = "series";
    item.dataset.series = uid;
    const img = document.createElement("img");
    img.alt = "";
    img.loading = "lazy";
    // Rendered on request by the server: asked for once the first image is on screen.
    img.dataset.src = `${studyUrl}/series/${uid}/thumbnail`;
    const label = document.createElement("span");
    const count = number(s, "00201209", "");
    label.textContent = [text(s, "00080060"), first(s, "00200011", ""), text(s, "0008103E"), count !== "" ? `(${count})` : ""].filter((x) => x !== "").join(" ");
    item.append(img, label);
    item.addEventListener("click", () => loadSeries(uid));
    strip.append(item);
  }
  markStrip();
  if (state.firstImageMs !== null) showThumbnails();
}

function showThumbnails() {
  for (const img of $("strip").querySelectorAll("img[data-src]")) {
    img.src = img.dataset.src;
    delete img.dataset.src;
  }
}

function markStrip() {
  for (const b of $("strip").querySelectorAll("button.series")) {
    b.setAttribute("aria-current", String(state.current && b.dataset.series === state.current.uid));
  }
}

let tagNames = null;

async function toggleTags() {
  const panel = $("tags");
  panel.hidden = !panel.hidden;
  if (!panel.hidden) {
    if (!tagNames) tagNames = await fetch(config.tagNames, { credentials: "same-origin" }).then((r) => r.json());
    showTags();
  }
  draw();
}

function tagLabel(tag) {
  return `(${tag.slice(0, 4)},${tag.slice(4)})`;
}

function valueText(e) {
  if (!e) return "";
  if (e.BulkDataURI) return "(bulk data)";
  if (e.InlineBinary) return `(${Math.floor((e.InlineBinary.length * 3) / 4)} bytes)`;
  if (!Array.isArray(e.Value)) return "";
  return e.Value.map(personOrText).join("\\");
}

function showTags() {
  const series = state.current;
  const item = series && metadataOf(series, state.index);
  const rows = [];
  const filter = $("tag-filter").value.trim().toLowerCase();
  const walk = (dataset, depth) => {
    for (const tag of Object.keys(dataset).sort()) {
      const e = dataset[tag];
      const name = (tagNames && tagNames[tag]) || "";
      const value = e.vr === "SQ" ? "" : valueText(e);
      const shown = !filter || `${tag} ${tagLabel(tag)} ${name} ${value}`.toLowerCase().includes(filter);
      if (shown) rows.push([depth, tagLabel(tag), name, e.vr, value, tag]);
      if (e.vr === "SQ" && Array.isArray(e.Value)) {
        e.Value.forEach((child, i) => {
          if (!filter) rows.push([depth + 1, "", `Item ${i + 1}`, "", "", ""]);
          walk(child || {}, depth + 1);
        });
      }
    }
  };
  if (item) walk(item, 0);
  const body = $("tag-rows");
  body.replaceChildren(
    ...rows.map(([depth, tag, name, vr, value, key]) => {
      const tr = document.createElement("tr");
      if (key) tr.dataset.tag = key;
      for (const [i, cell] of [tag, name, vr, value].entries()) {
        const td = document.createElement("td");
        td.textContent = cell;
        if (i === 0) td.style.paddingLeft = `${0.3 + depth * 1.2}em`;
        tr.append(td);
      }
      return tr;
    }),
  );
}

// --- Mouse, wheel, keys ------------------------------------------------------------------

canvas.addEventListener("contextmenu", (event) => event.preventDefault());

canvas.addEventListener("pointerdown", (event) => {
  if (!state.view) return;
  canvas.setPointerCapture(event.pointerId);
  canvas.focus();
  const tool = event.button === 1 ? "pan" : event.button === 2 ? "zoom" : state.tool;
  const start = { x: event.clientX, y: event.clientY, tool, window: state.window && { ...state.window }, view: { ...state.view } };
  if (tool === "measure") state.drawing = { a: toImage(event.clientX, event.clientY), b: toImage(event.clientX, event.clientY) };
  state.drag = start;
});

canvas.addEventListener("pointermove", (event) => {
  if (state.view) state.pointer = toImage(event.clientX, event.clientY);
  const drag = state.drag;
  if (!drag) {
    if (state.current && state.drawn) overlays(state.current, state.drawn.frame);
    return;
  }
  const dx = event.clientX - drag.x;
  const dy = event.clientY - drag.y;
  if (drag.tool === "window" && drag.window) {
    const frame = state.drawn && state.drawn.frame;
    const range = frame ? Math.abs(frame.modality(frame.max) - frame.modality(frame.min)) : 1024;
    const step = Math.max(range, 1) / 512; // the whole range in about one canvas of drag
    state.window = { center: drag.window.center + dy * step, width: Math.max(1, drag.window.width + dx * step) };
  } else if (drag.tool === "pan") {
    state.view = { ...drag.view, x: drag.view.x + dx, y: drag.view.y + dy };
  } else if (drag.tool === "zoom") {
    const box = canvas.getBoundingClientRect();
    state.view = { ...drag.view };
    zoomBy(Math.exp(-dy / 150), drag.x - box.left, drag.y - box.top);
  } else if (drag.tool === "measure" && state.drawing) {
    state.drawing.b = toImage(event.clientX, event.clientY);
  }
  draw();
});

function endDrag() {
  if (state.drag && state.drag.tool === "measure" && state.drawing) {
    const m = state.drawing;
    if (Math.hypot(m.b[0] - m.a[0], m.b[1] - m.a[1]) > 0.5) {
      const list = state.measurements.get(state.index) || [];
      list.push(m);
      state.measurements.set(state.index, list);
    }
  }
  state.drawing = null;
  state.drag = null;
  draw();
}
canvas.addEventListener("pointerup", endDrag);
canvas.addEventListener("pointercancel", endDrag);

canvas.addEventListener(
  "wheel",
  (event) => {
    event.preventDefault();
    if (event.ctrlKey) {
      const box = canvas.getBoundingClientRect();
      zoomBy(event.deltaY < 0 ? 1.1 : 1 / 1.1, event.clientX - box.left, event.clientY - box.top);
      draw();
    } else if (event.deltaY) {
      go(state.index + Math.sign(event.deltaY));
    }
  },
  { passive: false },
);

$("slider").addEventListener("input", (event) => go(Number(event.target.value) - 1));

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement && event.target.type !== "range") return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const n = state.current ? state.current.images.length : 0;
  const key = event.key;
  const actions = {
    ArrowDown: () => go(state.index + 1),
    ArrowRight: () => go(state.index + 1),
    ArrowUp: () => go(state.index - 1),
    ArrowLeft: () => go(state.index - 1),
    PageDown: () => go(state.index + 10),
    PageUp: () => go(state.index - 10),
    Home: () => go(0),
    End: () => go(n - 1),
    i: () => { state.invert = !state.invert; draw(); },
    f: () => { fit(); draw(); },
    r: reset,
    m: () => setTool("measure"),
    w: () => setTool("window"),
    p: () => setTool("pan"),
    z: () => setTool("zoom"),
    c: () => (state.cine ? stopCine() : startCine()),
    t: toggleTags,
    Escape: () => { if (!$("tags").hidden) toggleTags(); },
    "+": () => { zoomBy(1.25); draw(); },
    "=": () => { zoomBy(1.25); draw(); },
    "-": () => { zoomBy(0.8); draw(); },
    0: () => setPreset(null),
  };
  const list = presets();
  if (/^[1-9]$/.test(key) && list[Number(key) - 1]) actions[key] = () => setPreset(list[Number(key) - 1]);
  const action = actions[key] || actions[key.toLowerCase()];
  if (action) {
    event.preventDefault();
    action();
  }
});

new ResizeObserver(() => {
  if (state.view && state.drawn) {
    fit();
    draw();
  }
}).observe(canvas.parentElement);

// For the tests and the benchmark: timings, and the image's rendered pixels.
window.imagingViewer = {
  state,
  imageToClient: (x, y) => toClient(x, y),
  renderedPixel(x, y) {
    return Array.from(offContext.getImageData(x, y, 1, 1).data);
  },
  ready: () => state.firstImageMs !== null,
  setWindow(center, width) {
    state.window = { center, width };
    return draw();
  },
};

start().catch((error) => {
  console.error(error);
  message(T.error);
});
