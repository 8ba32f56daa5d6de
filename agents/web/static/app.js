// The drill's web page: recolours the server's network picture per step, lists the
// step's alerts, actions, red's moves and reward, and offers the human seat's legal
// actions. Everything it shows comes from the server's frames; it runs nothing else.
"use strict";

const token = new URLSearchParams(window.location.search).get("token") || "";
const state = {
  frames: [],
  colours: {},
  mode: "live",
  episodeLength: 0,
  shown: -1,
  prompt: null,
  pictureReady: false,
  original: new Map(),
};
// Read by tests and the latency benchmark: when each frame was drawn (epoch seconds).
window.cyberdial = { applied: [], loadedAt: null, firstFrameAt: null, state };

const $ = (id) => document.getElementById(id);

function setStatus(text) { $("status").textContent = text; }

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function paintHost(prefix, host, fill, stroke, width) {
  const group = document.getElementById(`${prefix}-host-${host}`);
  if (!group) return;
  // Markers are <use>s of a path in <defs> (shared by every host of that shape):
  // recolour the uses, never the shared path.
  const markers = Array.from(group.querySelectorAll("use, path")).filter((e) => !e.closest("defs"));
  for (const marker of markers) {
    marker.style.fill = fill;
    marker.style.stroke = stroke || "#333333";
    marker.style.strokeWidth = width || "0.5";
  }
  group.dataset.state = fill;
}

function tooltip(prefix, host, text) {
  const group = document.getElementById(`${prefix}-host-${host}`);
  if (!group) return;
  let title = group.querySelector(":scope > title");
  if (!title) {
    title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    group.prepend(title);
  }
  title.textContent = text;
}

function paintSubnet(prefix, subnet, blocked) {
  const group = document.getElementById(`${prefix}-subnet-${subnet}`);
  if (!group) return;
  for (const path of group.querySelectorAll("path")) {
    if (!state.original.has(path)) state.original.set(path, path.getAttribute("style") || "");
    path.setAttribute("style", state.original.get(path));
    if (blocked) {
      path.style.stroke = "#d62728";
      path.style.strokeDasharray = "8 4";
      path.style.strokeWidth = "4";
    }
  }
  group.dataset.blocked = blocked ? "yes" : "no";
}

function drawPicture(frame) {
  if (!state.pictureReady) return;
  const decoys = new Set(frame.decoys);
  for (const [host, truth] of Object.entries(frame.truth)) {
    const decoy = decoys.has(host);
    paintHost("truth", host, state.colours[truth], decoy ? "#00bcd4" : null, decoy ? "2.5" : null);
    const activity = frame.activity[host];
    const stroke = decoy ? "#00bcd4" : activity === "exploit" ? "#d62728" : activity === "scan" ? "#f9a825" : null;
    paintHost("belief", host, state.colours[frame.belief[host]], stroke, stroke ? "2.5" : null);
    tooltip("truth", host, `${host}: ${truth}${decoy ? ", decoy" : ""}`);
    tooltip("belief", host, `${host}: blue believes ${frame.belief[host]}${activity ? `, sees ${activity}` : ""}`);
    const group = document.getElementById(`truth-host-${host}`);
    if (group) group.dataset.truth = truth;
    const believed = document.getElementById(`belief-host-${host}`);
    if (believed) believed.dataset.belief = frame.belief[host];
  }
  const blocked = new Set(frame.blocked);
  for (const prefix of ["truth", "belief"]) {
    for (const group of document.querySelectorAll(`[id^="${prefix}-subnet-"]`)) {
      const subnet = group.id.slice(prefix.length + "-subnet-".length);
      paintSubnet(prefix, subnet, blocked.has(subnet));
    }
  }
}

function drawTables(index) {
  const frame = state.frames[index];
  $("step-label").textContent =
    `episode ${frame.episode}, step ${frame.step + 1}/${state.episodeLength}` +
    (state.mode === "replay" ? " (replay)" : "");
  $("return").textContent = frame.return.toFixed(2);
  $("reward").textContent = (frame.reward >= 0 ? "+" : "") + frame.reward.toFixed(2);
  const terms = $("terms").querySelector("tbody");
  terms.replaceChildren();
  for (const [name, value] of Object.entries(frame.reward_terms)) {
    const row = terms.insertRow();
    cell(row, name);
    cell(row, value.toFixed(2));
  }
  $("red").textContent = frame.red.length ? frame.red.join(", ") : "-";
  const agents = $("agents").querySelector("tbody");
  agents.replaceChildren();
  for (const agent of frame.agents) {
    const row = agents.insertRow();
    row.dataset.agent = agent.name;
    cell(row, agent.name);
    cell(row, agent.action).className = "action";
    cell(row, agent.message || "-");
    cell(row, agent.result);
  }
  // The latest alerts of this episode up to the shown step, newest first.
  const alerts = $("alerts").querySelector("tbody");
  alerts.replaceChildren();
  let shown = 0;
  for (let i = index; i >= 0 && shown < 20; i--) {
    const earlier = state.frames[i];
    if (earlier.episode !== frame.episode) break;
    for (const alert of earlier.alerts) {
      if (shown >= 20) break;
      const row = alerts.insertRow();
      if (i === index) row.className = "new";
      cell(row, String(earlier.step + 1));
      cell(row, alert.host);
      cell(row, alert.kind);
      cell(row, alert.evidence.slice(0, 60));
      shown++;
    }
  }
}

let chart = null;

// The episode's return so far and each step's reward, up to the shown step (uPlot).
function drawChart(index) {
  if (typeof uPlot === "undefined") return;
  const frame = state.frames[index];
  const steps = [], returns = [], rewards = [];
  for (let i = 0; i <= index; i++) {
    const f = state.frames[i];
    if (f.episode !== frame.episode) continue;
    steps.push(f.step + 1);
    returns.push(f.return);
    rewards.push(f.reward);
  }
  const data = [steps, returns, rewards];
  if (chart === null) {
    const width = Math.max(240, $("chart").clientWidth || 320);
    chart = new uPlot({
      width, height: 150,
      scales: { x: { time: false, range: [1, Math.max(2, state.episodeLength)] } },
      axes: [{ label: "step" }, {}],
      series: [
        { label: "step" },
        { label: "return", stroke: "#1565c0", width: 2 },
        { label: "reward", stroke: "#d62728", width: 1, points: { show: false } },
      ],
      legend: { show: true, live: false },
    }, data, $("chart"));
  } else {
    chart.setData(data);
  }
}

function show(index, live = false) {
  if (index < 0 || index >= state.frames.length) return;
  state.shown = index;
  $("slider").value = String(index);
  drawPicture(state.frames[index]);
  drawTables(index);
  drawChart(index);
  const now = Date.now() / 1000;
  if (window.cyberdial.firstFrameAt === null) window.cyberdial.firstFrameAt = now;
  const frame = state.frames[index];
  window.cyberdial.applied.push({ episode: frame.episode, step: frame.step, at: now, live });
}

function addFrame(frame, live) {
  state.frames.push(frame);
  const slider = $("slider");
  slider.max = String(state.frames.length - 1);
  slider.disabled = false;
  if ($("follow").checked || state.shown < 0) show(state.frames.length - 1, live);
}

function legend() {
  const names = { clean: "clean", user: "user-level red", privileged: "privileged red",
    impacted: "impacted", unknown: "believed unknown", unwatched: "no defender" };
  const box = $("legend");
  box.replaceChildren();
  for (const [key, label] of Object.entries(names)) {
    const item = document.createElement("span");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = state.colours[key];
    item.append(swatch, label);
    box.appendChild(item);
  }
  const extra = document.createElement("span");
  extra.textContent = "outline: yellow scan, red exploit seen by blue, cyan decoy; dashed red box: blocked";
  box.appendChild(extra);
}

let countdown = null;

function offer(prompt) {
  state.prompt = prompt;
  $("seat").hidden = false;
  $("seat-agent").textContent = prompt.agent;
  $("seat-sent").textContent = "";
  const list = $("seat-observation");
  list.replaceChildren();
  for (const line of prompt.observation) {
    const item = document.createElement("li");
    item.textContent = line;
    list.appendChild(item);
  }
  const actions = $("seat-actions");
  actions.replaceChildren();
  for (const action of prompt.actions) {
    const button = document.createElement("button");
    button.className = "action-button";
    button.dataset.index = String(action.index);
    button.textContent = action.label;
    button.addEventListener("click", () => choose(prompt, action));
    actions.appendChild(button);
  }
  const end = Date.now() / 1000 + prompt.deadline_s;
  clearInterval(countdown);
  const tick = () => {
    const left = Math.max(0, end - Date.now() / 1000);
    $("seat-deadline").textContent =
      `step ${prompt.step + 1}: choose within ${left.toFixed(1)} s (no choice = sleep)`;
  };
  tick();
  countdown = setInterval(tick, 200);
}

function closePrompt() {
  clearInterval(countdown);
  state.prompt = null;
  for (const button of document.querySelectorAll(".action-button")) button.disabled = true;
  $("seat-deadline").textContent = "waiting for the next step…";
}

function choose(prompt, action) {
  if (state.prompt !== prompt || !socket || socket.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ type: "choose", episode: prompt.episode, step: prompt.step, action: action.index }));
  $("seat-sent").textContent = `sent: ${action.label}`;
  $("seat-sent").dataset.step = String(prompt.step);
  $("seat-sent").dataset.label = action.label;
  for (const button of document.querySelectorAll(".action-button")) button.disabled = true;
}

let socket = null;

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${window.location.host}/stream?token=${encodeURIComponent(token)}`);
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "hello") {
      state.mode = message.mode;
      state.colours = message.colours;
      state.episodeLength = message.episode_length;
      $("title").textContent = message.title;
      document.title = `cyberdial: ${message.title}`;
      $("follow").checked = message.mode === "live";
      legend();
      state.frames = [];
      state.shown = -1;
      for (const frame of message.frames) addFrame(frame, false);
      if (message.mode === "replay" && state.frames.length) show(0);
      setStatus(message.finished ? (message.mode === "replay" ? "replay" : "drill over") : "live");
      if (message.prompt) offer(message.prompt);
    } else if (message.type === "frame") {
      addFrame(message.frame, true);
    } else if (message.type === "prompt") {
      offer(message.prompt);
    } else if (message.type === "prompt_closed") {
      if (state.prompt && state.prompt.step === message.step && state.prompt.episode === message.episode) closePrompt();
    } else if (message.type === "end") {
      setStatus("drill over: replay with the slider");
      closePrompt();
    }
  });
  socket.addEventListener("close", () => setStatus("disconnected (the drill or the server ended)"));
}

async function loadPicture() {
  const response = await fetch(`/picture.svg?token=${encodeURIComponent(token)}`);
  if (!response.ok) {
    $("picture").textContent = "the network picture could not be loaded";
    return;
  }
  $("picture").innerHTML = await response.text();
  state.pictureReady = true;
  if (state.shown >= 0) drawPicture(state.frames[state.shown]);
}

$("slider").addEventListener("input", () => {
  $("follow").checked = false;
  show(Number($("slider").value));
});

window.addEventListener("load", async () => {
  connect();
  await loadPicture();
  window.cyberdial.loadedAt = Date.now() / 1000;
});
