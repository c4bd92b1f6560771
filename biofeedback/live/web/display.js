// The participant's calm display in a browser: draws the frames the recorder sends, nothing else.
// The pacer is drawn here from the frame's parameters with the same raised-cosine waveform as protocols/pacer.py,
// so it moves smoothly between frames; the glow follows the session's level slowly. No numbers are ever shown.
"use strict";
(function () {
  const GLOW_TAU_S = 2.5;            // session seconds, as on the Qt display
  const R_MIN_SHARE = 0.085 / 0.22;  // the pacer's smallest radius over its largest, as on the Qt display
  const SILENT_MS = 5000;            // no frame for this long: the connection is taken as lost
  const NEUTRAL = [96, 160, 178], MID = [236, 204, 146], WARM = [255, 190, 108];
  const $ = (id) => document.getElementById(id);
  const body = document.body, pacerEl = $("pacer"), glowEl = $("glow"), labelEl = $("label");
  const layers = [$("prompt-a"), $("prompt-b")];
  let frame = null, glow = 0, glowStep = -1, lastDraw = 0, front = 0, prompt = null;
  let ws = null, lastMessage = 0, retryMs = 500, pending = null;

  function pacerSize(cycle, inhale) {           // protocols.pacer.pacer_size, on the cycle fraction
    const inhaling = cycle < inhale;
    const u = inhaling ? cycle / inhale : (cycle - inhale) / (1 - inhale);
    const rise = 0.5 - 0.5 * Math.cos(Math.PI * u);
    return inhaling ? rise : 1 - rise;
  }
  function mix(a, b, x) { return a.map((v, i) => Math.round(v + (b[i] - v) * x)); }
  function glowColour(level) { return level <= 0.5 ? mix(NEUTRAL, MID, level * 2) : mix(MID, WARM, level * 2 - 1); }
  function drawGlow(level) {
    const step = Math.round(level * 200);
    if (step === glowStep) return;
    glowStep = step;
    const x = step / 200, [r, g, b] = glowColour(x), peak = 0.24 + 0.36 * x;
    const stops = [[0, 1], [35, 0.75], [65, 0.32], [85, 0.1], [100, 0]]
      .map(([at, share]) => `rgba(${r}, ${g}, ${b}, ${(peak * share).toFixed(3)}) ${at}%`).join(", ");
    glowEl.style.background = `radial-gradient(circle closest-side, ${stops})`;
    glowEl.style.transform = `scale(${(1.3 + 0.55 * x).toFixed(4)})`;
  }
  function setPrompt(text) {
    if (text === prompt) return;
    prompt = text;
    layers[front].classList.remove("shown");
    front = 1 - front;
    layers[front].textContent = text;
    if (text) layers[front].classList.add("shown");
    if (!body.classList.contains("ready")) requestAnimationFrame(() => body.classList.add("ready"));
  }

  // Where in the breath the pacer is: cycle0 at time `at`. A frame's cycle is taken as it is at a new phase or
  // after a jump, else the page eases towards it, so delivery jitter never makes the disc twitch.
  let cycle0 = 0, at = 0, period = 0;
  function cycleAt(now) { return cycle0 + ((now - at) / 1000) * frame.rate / period; }
  function follow(p, now) {
    if (!p) { period = 0; return; }
    let error = 1;
    if (period === p.period_s) {
      error = p.cycle - cycleAt(now);
      error -= Math.round(error);                 // wrapped to -0.5 .. 0.5 of a breath
    }
    if (Math.abs(error) > 0.05) { cycle0 = p.cycle; } else { cycle0 = cycleAt(now) + 0.25 * error; }
    cycle0 -= Math.floor(cycle0);
    at = now; period = p.period_s;
  }

  function show(f) {
    const now = performance.now();
    const sameRate = frame && frame.rate === f.rate;
    frame = f;
    if (!sameRate) period = 0;
    follow(f.pacer, now);
    body.classList.toggle("paused", f.paused);
    body.classList.toggle("finished", f.finished);
    setPrompt(f.finished ? "" : f.prompt);
    $("message").textContent = f.message;
    $("replay").hidden = !f.replay;
    $("pause").textContent = f.self_paused ? "Continue" : "Pause";
    for (const b of [$("pause"), $("stop")]) b.disabled = f.replay || f.finished;
    if (!f.feedback) glow = f.glow;               // hidden feedback: neutral at once, no fading in or out
  }

  function draw(now) {
    requestAnimationFrame(draw);
    if (!frame) return;
    const rate = frame.rate;
    const p = frame.pacer;
    if (p && !frame.paused && !frame.finished) {
      const c = cycleAt(now), cycle = c - Math.floor(c);
      const size = pacerSize(cycle, p.inhale_fraction);
      pacerEl.hidden = false;
      pacerEl.style.transform = `scale(${(R_MIN_SHARE + (1 - R_MIN_SHARE) * size).toFixed(5)})`;
      const words = cycle < p.inhale_fraction ? "breathe in" : "breathe out";
      if (labelEl.textContent !== words) labelEl.textContent = words;
    } else {
      pacerEl.hidden = true;
      if (labelEl.textContent) labelEl.textContent = "";
    }
    const dt = lastDraw ? Math.max(0, (now - lastDraw) / 1000) * rate : 0;
    lastDraw = now;
    glow += (frame.glow - glow) * (1 - Math.exp(-dt / GLOW_TAU_S));
    drawGlow(glow);
  }

  function send(action) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ action }));
    else pending = action;                       // sent as soon as the page is connected again
  }
  $("pause").addEventListener("click", () => send(frame && frame.self_paused ? "resume" : "pause"));
  $("stop").addEventListener("click", () => send("stop"));

  function connect() {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + location.pathname.replace(/\/?$/, "/ws");
    const sock = new WebSocket(url);
    ws = sock;
    sock.onopen = () => {
      retryMs = 500; lastMessage = performance.now();
      body.dataset.connected = "1"; body.classList.remove("reconnecting");
      if (pending) { sock.send(JSON.stringify({ action: pending })); pending = null; }
    };
    sock.onmessage = (event) => {
      lastMessage = performance.now();
      let f;
      try { f = JSON.parse(event.data); } catch (e) { return; }
      if (f.type === "frame") show(f);
    };
    sock.onclose = () => {
      if (ws !== sock) return;
      ws = null; body.dataset.connected = "0";
      if (frame && frame.finished) return;       // the session is over: nothing to come back to
      body.classList.add("reconnecting");
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 4000);
    };
  }
  setInterval(() => {                            // a silent connection (network gone) is closed and retried
    if (ws && ws.readyState === WebSocket.OPEN && performance.now() - lastMessage > SILENT_MS) ws.close();
  }, 1000);
  if (navigator.wakeLock) navigator.wakeLock.request("screen").catch(() => {});
  connect();
  requestAnimationFrame(draw);
})();
