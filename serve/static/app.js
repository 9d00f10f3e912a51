// The page's behaviour: call the server's JSON endpoints and show their answers, or their
// errors in words, in the panel that asked. Plain browser JavaScript, no libraries.
"use strict";

const PIXELS = 28; // MNIST images are 28 x 28 grey values
const INK = 255;
const STROKE_WIDTH = 2.4; // pixels of the 28 x 28 image, about an MNIST pen's width
const LIVE_DELAY_MS = 400; // typing pause before the prefix is scored and its scalings drawn
const SCALING_UNITS = 16; // hidden units per gate drawn in the heat map
const ERROR_TEXT_CHARS = 300; // of a non-JSON error body

const byId = (id) => document.getElementById(id);
const page = { limits: {}, translations: [], current: 0, documentMode: false };

// ------------------------------------------------------------------------ talking to the server

class ServerError extends Error {}

function requestHeaders(json) {
  const headers = json ? { "Content-Type": "application/json" } : {};
  const key = byId("api-key").value.trim();
  if (key) {
    headers["Authorization"] = `Bearer ${key}`;
    headers["X-API-Key"] = key;
  }
  return headers;
}

function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => (item && item.msg ? `${(item.loc || []).slice(1).join(".") || "body"}: ${item.msg}` : JSON.stringify(item)))
      .join("; ");
  }
  return detail === undefined ? "" : JSON.stringify(detail);
}

function explain(status, statusText, detail) {
  const why = detail ? `: ${detail}` : ".";
  const code = `${status}${statusText ? " " + statusText : ""}`;
  if (status === 401 || status === 403) {
    const hint = byId("api-key").value.trim()
      ? "The API key entered above was not accepted."
      : "This server needs an API key: enter it in the API key field at the top of the page.";
    return `The server refused the request (${code})${why} ${hint}`;
  }
  if (status === 413) return `The request is too large for the server (${code})${why}`;
  if (status === 422 || status === 400) return `The server could not accept the request (${code})${why}`;
  if (status === 404) return `This server has no such endpoint (${code})${why}`;
  if (status === 504) return `The server took too long to answer (${code})${why}`;
  if (status >= 500) return `The server failed while answering (${code})${why}`;
  return `The server answered ${code}${why}`;
}

async function call(path, body) {
  let response;
  try {
    response = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers: requestHeaders(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ServerError(`Could not reach the server (${error.message}). Is it still running?`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data && data.detail !== undefined ? detailText(data.detail) : text.slice(0, ERROR_TEXT_CHARS);
    throw new ServerError(explain(response.status, response.statusText, detail));
  }
  if (data === null) throw new ServerError(`The server's answer to ${path} was not JSON.`);
  return data;
}

// ------------------------------------------------------------------------ panel helpers

function statusOf(panel) {
  return panel.querySelector(".status");
}

function say(panel, message) {
  const status = statusOf(panel);
  status.classList.remove("error");
  status.textContent = message;
}

function fail(panel, message) {
  const status = statusOf(panel);
  status.classList.add("error");
  status.textContent = message;
}

function problem(error) {
  return error instanceof ServerError ? error.message : `Something went wrong on this page: ${error.message}`;
}

// A number field: undefined when blank, else an integer or a float; a local error in words.
function numberField(input, label, integer) {
  const raw = input.value.trim();
  if (raw === "") return undefined;
  const value = Number(raw);
  if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new ServerError(`${label} must be ${integer ? "a whole number" : "a number"}, not "${raw}".`);
  }
  return value;
}

function submitOnCtrlEnter(textarea) {
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      textarea.form.requestSubmit();
    }
  });
}

async function busy(button, work) {
  button.disabled = true;
  try {
    await work();
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------ models

const TASKS = { translation: "translate", classify: "digit", char_lm: "lm" };
const TASK_NAMES = { translation: "Translation", classify: "Digit classifier", char_lm: "Character language model" };

async function loadModels() {
  const status = byId("models-status");
  status.classList.remove("error");
  status.textContent = "Reading the server's models\u2026";
  let overview;
  try {
    overview = await call("/models");
  } catch (error) {
    status.classList.add("error");
    status.textContent = `Could not read the loaded models: ${problem(error)}`;
    return;
  }
  status.textContent = "";
  page.limits = overview.limits || {};
  for (const [task, panelId] of Object.entries(TASKS)) {
    const panel = byId(panelId);
    const loaded = Boolean(overview.models && overview.models[task]);
    panel.classList.toggle("unavailable", !loaded);
    panel.querySelector(".not-loaded").hidden = loaded;
  }
  applyLimits();
  renderModels(overview);
}

function applyLimits() {
  const limits = page.limits;
  const setMax = (id, value) => {
    if (value !== undefined) byId(id).max = value;
  };
  setMax("translate-beam", limits.max_beam_size);
  setMax("translate-nbest", limits.max_nbest);
  setMax("translate-alpha", limits.max_alpha);
  setMax("translate-beta", limits.max_beta);
  setMax("lm-length", limits.max_generate_length);
  setMax("lm-temperature", limits.max_temperature);
  countTranslateText();
}

function readable(value) {
  if (value === null || value === undefined) return "none";
  if (Array.isArray(value)) return value.map(readable).join(", ");
  if (typeof value === "object") {
    const parts = Object.entries(value).map(([name, inner]) => `${name} ${readable(inner)}`);
    return parts.length ? parts.join(", ") : "none";
  }
  return String(value);
}

function definitionList(entries) {
  const list = document.createElement("dl");
  for (const [name, value] of entries) {
    const term = document.createElement("dt");
    term.textContent = name;
    const definition = document.createElement("dd");
    definition.textContent = readable(value);
    list.append(term, definition);
  }
  return list;
}

function jsonDetails(summary, value) {
  const details = document.createElement("details");
  const title = document.createElement("summary");
  title.textContent = summary;
  const body = document.createElement("pre");
  body.textContent = JSON.stringify(value, null, 2);
  details.append(title, body);
  return details;
}

function renderModels(overview) {
  const out = byId("models-out");
  out.replaceChildren();
  for (const [task, entry] of Object.entries(overview.models || {})) {
    const title = document.createElement("h3");
    title.textContent = `${TASK_NAMES[task] || task}: ${entry.bundle}`;
    const manifest = entry.manifest || {};
    const facts = Object.entries(manifest).filter(([name]) => name !== "files");
    if (manifest.files) facts.push(["files", Object.keys(manifest.files).join(", ")]);
    const endpoints = Object.entries(entry.endpoints || {}).map(
      ([path, how]) => `${path} (${how.batching}, up to ${how.max_batch_size} together)`,
    );
    facts.push(["endpoints", endpoints.join("; ")]);
    if (entry.vocabulary) facts.push(["vocabulary", `${entry.vocabulary.length} symbols`]);
    out.append(title, definitionList(facts), jsonDetails("Model configuration", entry.config));
    if (entry.decoding) out.append(jsonDetails("Decoding defaults", entry.decoding));
  }
  const limits = document.createElement("h3");
  limits.textContent = "Request limits";
  out.append(limits, definitionList(Object.entries(overview.limits || {})));
  const server = [
    ["workers per endpoint", overview.workers],
    ["threads per worker", overview.threads],
    ["quantised at load", overview.quantize_at_load || "no"],
  ];
  out.append(definitionList(server));
}

// ------------------------------------------------------------------------ translate

// Whether /translate takes whole documents and returns alignments: read from the OpenAPI schema.
async function translateFeatures() {
  const note = byId("translate-features");
  let schema;
  try {
    schema = await call("/openapi.json");
  } catch {
    return; // the controls stay on; the server will say what it does not take
  }
  const components = (schema.components && schema.components.schemas) || {};
  const properties = new Set();
  const visit = (node) => {
    if (!node || typeof node !== "object") return;
    if (node.$ref) return visit(components[node.$ref.split("/").pop()]);
    Object.keys(node.properties || {}).forEach((name) => properties.add(name));
    ["anyOf", "oneOf", "allOf"].forEach((key) => (node[key] || []).forEach(visit));
  };
  const post = schema.paths && schema.paths["/translate"] && schema.paths["/translate"].post;
  if (!post) return;
  visit(post.requestBody && post.requestBody.content["application/json"].schema);
  const missing = [];
  for (const [name, id, words] of [
    ["document", "translate-document", "whole documents"],
    ["alignment", "translate-alignment", "alignments"],
  ]) {
    const offered = properties.has(name);
    byId(id).disabled = !offered;
    if (!offered) {
      byId(id).checked = false;
      missing.push(words);
    }
  }
  note.textContent = missing.length ? `This server's /translate does not offer ${missing.join(" or ")}.` : "";
}

function translateLines() {
  return byId("translate-text").value.split("\n").map((line) => line.trim()).filter(Boolean);
}

function countTranslateText() {
  const counter = byId("translate-count");
  const limit = page.limits.max_text_chars;
  const text = byId("translate-text").value;
  if (byId("translate-document").checked) {
    counter.textContent = `${text.length} characters`;
    counter.classList.remove("over");
    return;
  }
  const longest = Math.max(0, ...translateLines().map((line) => line.length));
  counter.textContent = limit ? `longest line: ${longest} of at most ${limit} characters` : "";
  counter.classList.toggle("over", Boolean(limit) && longest > limit);
}

async function translate(event) {
  event.preventDefault();
  const panel = byId("translate");
  const button = event.target.querySelector("button[type=submit]");
  await busy(button, async () => {
    try {
      const documentMode = byId("translate-document").checked;
      const body = {};
      if (documentMode) {
        if (!byId("translate-text").value.trim()) throw new ServerError("Type a text to translate.");
        body.document = byId("translate-text").value;
      } else {
        const lines = translateLines();
        if (!lines.length) throw new ServerError("Type a sentence to translate.");
        body.text = lines;
      }
      const options = [
        ["beam_size", "translate-beam", "Beam size", true],
        ["nbest", "translate-nbest", "Alternatives", true],
        ["alpha", "translate-alpha", "Length penalty", false],
        ["beta", "translate-beta", "Coverage penalty", false],
      ];
      for (const [name, id, label, integer] of options) {
        const value = numberField(byId(id), label, integer);
        if (value !== undefined) body[name] = value;
      }
      if (byId("translate-alignment").checked) body.alignment = true;
      say(panel, "Translating\u2026");
      const answer = await call("/translate", body);
      say(panel, "");
      showTranslations(answer, documentMode);
    } catch (error) {
      fail(panel, problem(error));
    }
  });
}

function formatNumber(value) {
  return typeof value === "number" ? value.toFixed(3) : "";
}

function showTranslations(answer, documentMode) {
  const documentOut = byId("translate-document-out");
  documentOut.hidden = typeof answer.document !== "string";
  documentOut.textContent = documentOut.hidden ? "" : answer.document;
  page.documentMode = documentMode;
  page.translations = answer.translations || [];
  const list = byId("translate-out");
  list.replaceChildren();
  page.translations.forEach((translation, index) => {
    const item = document.createElement("li");
    item.tabIndex = 0;
    item.dataset.index = index;
    const best = document.createElement("div");
    best.className = "best";
    best.lang = "de";
    best.textContent = translation.text || "(an empty translation)";
    item.append(best);
    if (Array.isArray(translation.nbest) && translation.nbest.length) {
      const table = document.createElement("table");
      table.innerHTML = "<caption class='hint'>Alternatives, best first</caption>"
        + "<thead><tr><th scope='col'>#</th><th scope='col'>translation</th>"
        + "<th scope='col'>score</th><th scope='col'>log P</th></tr></thead>";
      const rows = document.createElement("tbody");
      translation.nbest.forEach((candidate, rank) => {
        const row = rows.insertRow();
        [String(rank + 1), candidate.text, formatNumber(candidate.score), formatNumber(candidate.log_prob)]
          .forEach((value) => (row.insertCell().textContent = value));
      });
      table.append(rows);
      item.append(table);
    }
    item.addEventListener("click", () => selectSentence(index));
    item.addEventListener("focus", () => selectSentence(index));
    list.append(item);
  });
  selectSentence(documentMode ? 0 : sentenceAtCursor());
}

// The sentence under the text box's cursor: its line among the non-blank lines.
function sentenceAtCursor() {
  const box = byId("translate-text");
  const before = box.value.slice(0, box.selectionStart).split("\n");
  const lineIndex = before.length - 1;
  const lines = box.value.split("\n");
  let sentence = -1;
  for (let i = 0; i <= lineIndex && i < lines.length; i++) if (lines[i].trim()) sentence++;
  return Math.max(0, sentence);
}

function selectSentence(index) {
  if (!page.translations.length) return;
  page.current = Math.min(index, page.translations.length - 1);
  byId("translate-out").querySelectorAll("li").forEach((item, i) => {
    item.classList.toggle("current", i === page.current);
  });
  drawAlignment(page.translations[page.current], page.current);
}

function drawAlignment(translation, index) {
  const figure = byId("alignment");
  const source = translation && translation.source_tokens;
  const target = translation && translation.target_tokens;
  if (!Array.isArray(source) || !Array.isArray(target) || !Array.isArray(translation.alignment)) {
    figure.hidden = true;
    return;
  }
  const linked = new Set(translation.alignment.map(([s, t]) => `${s},${t}`));
  const grid = byId("alignment-grid");
  grid.replaceChildren();
  const head = grid.createTHead().insertRow();
  head.append(document.createElement("td"));
  for (const token of target) {
    const cell = document.createElement("th");
    cell.scope = "col";
    cell.textContent = token;
    head.append(cell);
  }
  const body = grid.createTBody();
  source.forEach((token, s) => {
    const row = body.insertRow();
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = token;
    row.append(name);
    target.forEach((word, t) => {
      const cell = row.insertCell();
      const on = linked.has(`${s},${t}`);
      cell.className = on ? "on" : "";
      cell.title = `${token} \u2192 ${word}${on ? ": aligned" : ""}`;
      if (on) cell.setAttribute("aria-label", `${token} aligned with ${word}`);
    });
  });
  byId("alignment-caption").textContent =
    `Alignment of sentence ${index + 1}: source tokens (rows) by translation tokens (columns)`;
  figure.hidden = false;
}

// ------------------------------------------------------------------------ digit

const digit = { drawing: false, last: null, pen: { x: PIXELS / 2, y: PIXELS / 2 } };

function digitContext() {
  return byId("digit-canvas").getContext("2d", { willReadFrequently: true });
}

function clearDigit() {
  const context = digitContext();
  context.fillStyle = "#000";
  context.fillRect(0, 0, PIXELS, PIXELS);
  byId("digit-answer").textContent = "";
  byId("digit-bars").replaceChildren();
  say(byId("digit"), "");
}

function stroke(from, to) {
  const context = digitContext();
  context.strokeStyle = "#fff";
  context.fillStyle = "#fff";
  context.lineWidth = STROKE_WIDTH;
  context.lineCap = "round";
  context.lineJoin = "round";
  context.beginPath();
  context.moveTo(from.x, from.y);
  context.lineTo(to.x, to.y);
  context.stroke();
}

function canvasPoint(event) {
  const canvas = byId("digit-canvas");
  const box = canvas.getBoundingClientRect();
  return { x: ((event.clientX - box.left) / box.width) * PIXELS, y: ((event.clientY - box.top) / box.height) * PIXELS };
}

function greyValues() {
  const data = digitContext().getImageData(0, 0, PIXELS, PIXELS).data;
  const rows = [];
  for (let y = 0; y < PIXELS; y++) {
    const row = [];
    for (let x = 0; x < PIXELS; x++) row.push(data[(y * PIXELS + x) * 4]); // red = grey
    rows.push(row);
  }
  return rows;
}

async function classify() {
  const panel = byId("digit");
  const pixels = greyValues();
  if (!pixels.some((row) => row.some((value) => value > 0))) {
    fail(panel, "Draw a digit first: the drawing area is empty.");
    return;
  }
  try {
    say(panel, "Classifying\u2026");
    const answer = await call("/classify", { pixels });
    say(panel, "");
    showDigit(answer);
  } catch (error) {
    fail(panel, problem(error));
  }
}

function showDigit(answer) {
  const probabilities = answer.probabilities;
  byId("digit-answer").textContent =
    `Most likely ${answer.digit}, with probability ${(100 * probabilities[answer.digit]).toFixed(1)} %`;
  const bars = byId("digit-bars");
  bars.replaceChildren();
  probabilities.forEach((p, k) => {
    const item = document.createElement("li");
    item.dataset.digit = k;
    item.dataset.probability = p;
    item.className = k === answer.digit ? "top" : "";
    item.setAttribute("aria-label", `${k}: ${(100 * p).toFixed(1)} %`);
    const value = document.createElement("span");
    value.textContent = `${Math.round(100 * p)}%`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.height = `${(100 * p).toFixed(2)}%`;
    const label = document.createElement("strong");
    label.textContent = k;
    item.append(value, bar, label);
    bars.append(item);
  });
}

function movePenMarker() {
  const marker = byId("digit-pen");
  marker.style.left = `${(Math.floor(digit.pen.x) / PIXELS) * 100}%`;
  marker.style.top = `${(Math.floor(digit.pen.y) / PIXELS) * 100}%`;
}

function setUpDigit() {
  const canvas = byId("digit-canvas");
  clearDigit();
  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    digit.drawing = true;
    digit.last = canvasPoint(event);
    stroke(digit.last, digit.last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!digit.drawing) return;
    const point = canvasPoint(event);
    stroke(digit.last, point);
    digit.last = point;
  });
  const finish = () => {
    if (!digit.drawing) return;
    digit.drawing = false;
    classify();
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  canvas.addEventListener("keydown", (event) => {
    if (event.key in moves) {
      event.preventDefault();
      const [dx, dy] = moves[event.key];
      const from = { ...digit.pen };
      digit.pen.x = Math.min(PIXELS - 0.5, Math.max(0.5, digit.pen.x + dx));
      digit.pen.y = Math.min(PIXELS - 0.5, Math.max(0.5, digit.pen.y + dy));
      if (!event.shiftKey) stroke(from, digit.pen);
      movePenMarker();
    } else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      classify();
    } else if (event.key === "Delete" || event.key === "Backspace") {
      event.preventDefault();
      clearDigit();
    }
  });
  canvas.addEventListener("focus", () => {
    movePenMarker();
    byId("digit-pen").hidden = false;
  });
  canvas.addEventListener("blur", () => (byId("digit-pen").hidden = true));
  byId("digit-classify").addEventListener("click", classify);
  byId("digit-clear").addEventListener("click", clearDigit);
}

// ------------------------------------------------------------------------ continue text

const lm = { sequence: 0 };

async function continueText(event) {
  event.preventDefault();
  const panel = byId("lm");
  const button = event.target.querySelector("button[type=submit]");
  await busy(button, async () => {
    const prefix = byId("lm-prefix").value;
    let body;
    try {
      body = { prefix, length: numberField(byId("lm-length"), "Characters to add", true) ?? 100 };
      const temperature = numberField(byId("lm-temperature"), "Temperature", false);
      const seed = numberField(byId("lm-seed"), "Seed", true);
      if (temperature !== undefined) body.temperature = temperature;
      if (seed !== undefined) body.seed = seed;
    } catch (error) {
      fail(panel, problem(error));
      return;
    }
    say(panel, "Writing\u2026");
    const errors = [];
    const generate = call("/lm/generate", body).then(
      (answer) => showContinuation(prefix, answer.text),
      (error) => errors.push(`Continuation: ${problem(error)}`),
    );
    await Promise.all([generate, readPrefix(errors)]);
    if (errors.length) fail(panel, errors.join("\n"));
    else say(panel, "");
  });
}

function showContinuation(prefix, text) {
  const out = byId("lm-out");
  const added = document.createElement("span");
  added.className = "added";
  added.textContent = text;
  out.replaceChildren(document.createTextNode(prefix), added);
}

// Bits per character and the weight scalings of the prefix; errors are added to ``errors``.
async function readPrefix(errors) {
  const sequence = ++lm.sequence;
  const text = byId("lm-prefix").value;
  if (!text.trim()) {
    byId("lm-score").textContent = "";
    byId("scalings").hidden = true;
    return;
  }
  const score = call("/lm/score", { text }).then(
    (answer) => {
      if (sequence !== lm.sequence) return;
      byId("lm-score").textContent = `The model reads this text at ${answer.bits_per_character.toFixed(3)} `
        + `bits per character (${answer.characters} characters, the end of the line included).`;
    },
    (error) => errors.push(`Bits per character: ${problem(error)}`),
  );
  const scalings = call("/lm/scalings", { text, units: SCALING_UNITS }).then(
    (answer) => sequence === lm.sequence && drawScalings(answer),
    (error) => errors.push(`Weight scalings: ${problem(error)}`),
  );
  await Promise.all([score, scalings]);
}

let liveTimer = null;

function prefixTyped() {
  clearTimeout(liveTimer);
  liveTimer = setTimeout(async () => {
    const panel = byId("lm");
    const errors = [];
    await readPrefix(errors);
    if (errors.length) fail(panel, errors.join("\n"));
    else if (statusOf(panel).classList.contains("error")) say(panel, "");
  }, LIVE_DELAY_MS);
}

// Diverging colour for v in [-1, 1]: blue below zero, white at zero, red above.
function colour(v) {
  const t = Math.min(1, Math.abs(v));
  const [r, g, b] = v >= 0 ? [178, 24, 43] : [33, 102, 172];
  const mix = (c) => Math.round(255 + (c - 255) * t);
  return `rgb(${mix(r)},${mix(g)},${mix(b)})`;
}

function drawScalings(answer) {
  const canvas = byId("scalings-canvas");
  byId("scalings").hidden = false; // shown first: a hidden figure has no width to fit
  const characters = answer.characters;
  const units = answer.d_h[0].length;
  const labelWidth = 44;
  const cell = Math.max(8, Math.min(16, Math.floor((canvas.parentElement.clientWidth - labelWidth) / characters.length)));
  const rowHeight = Math.max(2, Math.floor(64 / units));
  const gap = 4;
  const blocks = [];
  for (const name of ["d_h", "d_x"]) answer.gates.forEach((gate, g) => blocks.push([name, gate, answer[name][g]]));
  const height = blocks.length * (units * rowHeight + gap) + 18;
  const width = labelWidth + characters.length * cell;
  const scale = window.devicePixelRatio || 1;
  canvas.width = Math.ceil(width * scale);
  canvas.height = Math.ceil(height * scale);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const context = canvas.getContext("2d");
  context.setTransform(scale, 0, 0, scale, 0, 0);
  context.fillStyle = "#fff";
  context.fillRect(0, 0, width, height);
  context.font = "11px system-ui, sans-serif";
  context.textBaseline = "middle";
  blocks.forEach(([name, gate, rows], b) => {
    const top = b * (units * rowHeight + gap);
    // each unit's own scale differs a lot; its change over the text is what d(z) adds
    const changes = rows.map((row) => {
      const mean = row.reduce((sum, v) => sum + v, 0) / row.length;
      return row.map((v) => v - mean);
    });
    const limit = Math.max(1e-6, ...changes.map((row) => Math.max(...row.map(Math.abs))));
    changes.forEach((row, u) => {
      row.forEach((v, t) => {
        context.fillStyle = colour(v / limit);
        context.fillRect(labelWidth + t * cell, top + u * rowHeight, cell, rowHeight);
      });
    });
    context.fillStyle = "#1d232b";
    context.fillText(`${name.replace("_", "")} ${gate}`, 2, top + (units * rowHeight) / 2);
  });
  context.textAlign = "center";
  context.fillStyle = "#1d232b";
  characters.forEach((character, t) => {
    context.fillText(character === " " ? "\u2423" : character, labelWidth + (t + 0.5) * cell, height - 9);
  });
  canvas.dataset.columns = characters.length;
  canvas.dataset.rows = blocks.length * units;
  canvas.setAttribute("aria-label",
    `Heat map of ${blocks.length * units} weight scalings (layer ${answer.layer}, ${units} of `
    + `${answer.hidden_size} units per gate) over the ${characters.length} characters of the text`);
}

// ------------------------------------------------------------------------ start

function start() {
  const readServer = () => {
    loadModels();
    translateFeatures();
  };
  byId("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    readServer();
  });
  byId("api-key").addEventListener("change", readServer);
  const translateForm = byId("translate").querySelector("form");
  translateForm.addEventListener("submit", translate);
  submitOnCtrlEnter(byId("translate-text"));
  byId("translate-text").addEventListener("input", countTranslateText);
  byId("translate-document").addEventListener("change", countTranslateText);
  for (const name of ["keyup", "click"]) {
    byId("translate-text").addEventListener(name, () => {
      if (!page.documentMode) selectSentence(sentenceAtCursor());
    });
  }
  setUpDigit();
  byId("lm").querySelector("form").addEventListener("submit", continueText);
  submitOnCtrlEnter(byId("lm-prefix"));
  byId("lm-prefix").addEventListener("input", prefixTyped);
  readServer();
}

document.addEventListener("DOMContentLoaded", start);
