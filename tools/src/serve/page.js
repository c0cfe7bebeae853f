// The streamdit page: one WebSocket to /ws carries the frames (binary: a 48-byte header,
// then a JPEG) and the JSON messages (hello, stats, ack, error; prompt switches go back the
// same way). The newest frame wins: a frame that arrives while the previous one is still
// being decoded replaces any frame waiting behind it.
"use strict";

const HEADER_LEN = 48;
const query = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

// What the page knows, for people and for tests (`window.streamdit`).
const state = (window.streamdit = {
  hello: null,
  stats: null,
  ack: null,
  error: null,
  closed: null,
  framesReceived: 0,
  framesDrawn: 0,
  lastHeader: null,
  drawnAt: [],
});

let socket = null;
let waiting = null; // the newest frame not yet drawn
let drawing = false;

function wsUrl() {
  const u = new URL("ws", location.href);
  u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const q = new URLSearchParams();
  for (const k of ["token", "prompt", "seed", "stream"]) {
    if (query.get(k)) q.set(k, query.get(k));
  }
  q.set("format", "jpeg");
  u.search = q.toString();
  return u.toString();
}

function say(text, isError) {
  const el = $("state");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function parseHeader(buf) {
  const v = new DataView(buf);
  const magic = String.fromCharCode(v.getUint8(0), v.getUint8(1), v.getUint8(2), v.getUint8(3));
  if (magic !== "SDIT") throw new Error("not a streamdit frame");
  const n = (o) => Number(v.getBigUint64(o, true));
  return {
    headerLen: v.getUint16(4, true),
    format: v.getUint16(6, true),
    width: v.getUint32(8, true),
    height: v.getUint32(12, true),
    index: n(16),
    call: n(24),
    promptId: n(32),
    timeMs: n(40),
  };
}

async function drawLoop() {
  drawing = true;
  while (waiting) {
    const f = waiting;
    waiting = null;
    try {
      const bmp = await createImageBitmap(f.blob);
      if (canvas.width !== f.header.width || canvas.height !== f.header.height) {
        canvas.width = f.header.width;
        canvas.height = f.header.height;
      }
      ctx.drawImage(bmp, 0, 0);
      bmp.close();
      state.framesDrawn += 1;
      state.lastHeader = f.header;
      const now = performance.now();
      state.drawnAt.push(now);
      while (state.drawnAt.length > 32) state.drawnAt.shift();
      $("frameinfo").textContent =
        `frame ${f.header.index} · model call ${f.header.call} · prompt #${f.header.promptId}`;
    } catch (e) {
      say(`could not draw a frame: ${e}`, true);
    }
  }
  drawing = false;
}

function onFrame(buf) {
  state.framesReceived += 1;
  const header = parseHeader(buf);
  const blob = new Blob([new Uint8Array(buf, header.headerLen)], { type: "image/jpeg" });
  waiting = { header, blob };
  if (!drawing) drawLoop();
}

const fmt = (v, digits = 1, unit = "") =>
  v === null || v === undefined ? "–" : `${Number(v).toFixed(digits)}${unit}`;
const bytes = (b) => (b === null || b === undefined ? "–" : `${(b / 1048576).toFixed(1)} MiB`);

function pageFps() {
  const t = state.drawnAt;
  return t.length > 1 ? ((t.length - 1) * 1000) / (t[t.length - 1] - t[0]) : null;
}

function showFigures(s) {
  const rows = [
    ["Shown on this page", fmt(pageFps(), 1, " FPS")],
    ["Delivered by the server", fmt(s.fps.delivered, 1, " FPS")],
    ["Model stage", fmt(s.fps.model, 1, " FPS") + ` (${fmt(s.ms.model_call, 1, " ms/call")})`],
    ["Decode stage", fmt(s.fps.decode, 0, " FPS") + ` (${fmt(s.ms.decode_chunk, 2, " ms/chunk")})`],
    ["JPEG stage", fmt(s.fps.jpeg, 0, " FPS") + ` (${fmt(s.ms.jpeg_frame, 2, " ms/frame")})`],
    ["Prompt encoding", fmt(s.ms.text, 1, " ms")],
    ["Latency", fmt(s.latency_ms, 0, " ms")],
    ["Prompt switch to screen", fmt(s.switch_latency_ms, 0, " ms")],
    ["First frame", fmt(s.first_frame_ms, 0, " ms")],
    ["Model calls / frames", `${s.calls} / ${s.frames}`],
    ["Frames dropped (slow viewers)", `${s.dropped_frames}`],
    ["Viewers of this stream", `${s.viewers}`],
    ["Server memory (RSS)", bytes(s.memory && s.memory.rss_bytes)],
    ["GPU memory", s.memory && s.memory.gpu_used_bytes != null ? bytes(s.memory.gpu_used_bytes) : "not known"],
  ];
  const table = $("figures");
  table.replaceChildren(
    ...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      for (const text of [k, v]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    })
  );
  $("active").textContent = `“${s.prompt}” (prompt #${s.prompt_id}, from model call ${s.prompt_since_call})`;
  if (s.error) say(`stream error: ${s.error}`, true);
}

function onHello(h) {
  state.hello = h;
  $("about").textContent =
    `profile ${h.profile} · ${h.width}x${h.height} at ${h.fps_target} FPS · ${h.backend} · ` +
    `stream ${h.id}${h.shared ? " (shared: everyone watching steers it)" : ""}`;
  canvas.width = h.width;
  canvas.height = h.height;
  canvas.style.imageRendering = h.width < 512 ? "pixelated" : "auto";
  $("prompt").maxLength = h.limits.prompt_bytes;
  if (h.cfg) {
    $("cfg").hidden = false;
    $("negative").value = h.negative_prompt;
    $("guidance").value = h.guidance;
  }
  const t = query.get("token") ? `&token=${encodeURIComponent(query.get("token"))}` : "";
  const mjpeg = `stream.mjpg?stream=${h.id}${t}`;
  $("links").innerHTML = "";
  const a = document.createElement("a");
  a.href = mjpeg;
  a.textContent = "this stream as MJPEG";
  $("links").append("Watch elsewhere: ", a, " (VLC, ffplay, an <img> tag)");
  showFigures(h);
}

function onMessage(text) {
  let m;
  try {
    m = JSON.parse(text);
  } catch (e) {
    say(`bad message from the server: ${e}`, true);
    return;
  }
  if (m.type === "hello") onHello(m);
  else if (m.type === "stats") {
    state.stats = m;
    showFigures(m);
  } else if (m.type === "ack") {
    state.ack = m;
    say(
      m.applies_at_call !== undefined
        ? `switched: from model call ${m.applies_at_call}`
        : "applied (the stream restarted)"
    );
  } else if (m.type === "error") {
    state.error = m.error;
    say(m.error, true);
  }
}

function connect() {
  say("connecting…");
  socket = new WebSocket(wsUrl());
  socket.binaryType = "arraybuffer";
  socket.onopen = () => say("connected");
  socket.onmessage = (ev) => (typeof ev.data === "string" ? onMessage(ev.data) : onFrame(ev.data));
  socket.onclose = (ev) => {
    state.closed = ev.code;
    if (!state.error) say(`disconnected (${ev.code}${ev.reason ? ": " + ev.reason : ""}); reload to reconnect`, true);
  };
}

function send(obj) {
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    say("not connected", true);
    return;
  }
  state.error = null;
  socket.send(JSON.stringify(obj));
}

$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter") {
    ev.preventDefault();
    say("switching…");
    send({ prompt: $("prompt").value });
  }
});

function applyCfg() {
  const g = parseFloat($("guidance").value);
  if (!Number.isFinite(g)) {
    say("guidance: enter a number", true);
    return;
  }
  say("restarting the stream…");
  send({ negative_prompt: $("negative").value, guidance: g });
}
$("apply").addEventListener("click", applyCfg);
$("negative").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter") applyCfg();
});

connect();
