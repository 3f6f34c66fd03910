// The chat page: streams answers from POST /v1/chat/completions (SSE), keeps the conversation
// and the settings in localStorage, and lets the user stop an answer (the server aborts the
// request when the connection closes).
"use strict";

(function () {
  const KEYS = { conversation: "mistral-nemo.conversation", settings: "mistral-nemo.settings", apiKey: "mistral-nemo.api-key" };
  const DEFAULTS = { system: "", temperature: 0.3, maxTokens: "", model: "" };
  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model"), settings: $("settings"), settingsToggle: $("settings-toggle"), newChat: $("new-chat"),
    system: $("system"), temperature: $("temperature"), temperatureValue: $("temperature-value"),
    maxTokens: $("max-tokens"), apiKey: $("api-key"), conversation: $("conversation"), empty: $("empty"),
    error: $("error"), errorText: $("error-text"), errorClose: $("error-close"),
    composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  };

  const load = (key, fallback) => {
    try {
      return JSON.parse(localStorage.getItem(key)) ?? fallback;
    } catch {
      return fallback;
    }
  };
  const state = {
    messages: load(KEYS.conversation, []), // [{role: "user" | "assistant", content, note?}]
    settings: { ...DEFAULTS, ...load(KEYS.settings, {}) },
    apiKey: localStorage.getItem(KEYS.apiKey) || "",
    controller: null,
    extraBody: {}, // more request fields, from the console or a test: mistralChat.state.extraBody.top_k = 40
  };
  const saveConversation = () => localStorage.setItem(KEYS.conversation, JSON.stringify(state.messages));
  const saveSettings = () => localStorage.setItem(KEYS.settings, JSON.stringify(state.settings));

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (state.apiKey) h.Authorization = `Bearer ${state.apiKey}`;
    return h;
  }

  // The server's message from {"error": {"message": ...}}, or the HTTP status.
  async function errorMessage(response) {
    let text = "";
    try {
      text = await response.text();
      const body = JSON.parse(text);
      const message = body?.error?.message ?? body?.detail ?? body?.message;
      if (message) return `${response.status}: ${typeof message === "string" ? message : JSON.stringify(message)}`;
    } catch {
      /* not JSON */
    }
    return `${response.status} ${response.statusText}${text ? `: ${text.slice(0, 200)}` : ""}`;
  }

  function showError(message) {
    ui.errorText.textContent = message;
    ui.error.hidden = !message;
  }

  // ---- rendering ----------------------------------------------------------------------------

  function messageElement(message, index) {
    const article = document.createElement("article");
    article.className = `message ${message.role}`;
    article.dataset.index = index;
    const who = document.createElement("h2");
    who.className = "who";
    who.textContent = message.role === "user" ? "You" : "Assistant";
    const body = document.createElement("div");
    body.className = "body";
    article.append(who, body);
    fillBody(article, message);
    return article;
  }

  function fillBody(article, message) {
    const body = article.querySelector(".body");
    if (message.role === "user") {
      body.textContent = message.content;
    } else {
      body.innerHTML = window.renderMarkdown(message.content);
      if (!message.content && message.pending) body.innerHTML = '<span class="typing" aria-label="Thinking">…</span>';
    }
    let note = article.querySelector(".note");
    if (message.note && !note) {
      note = document.createElement("p");
      note.className = "note";
      article.append(note);
    }
    if (note) note.textContent = message.note || "";
    article.setAttribute("aria-busy", message.pending ? "true" : "false");
  }

  function addCopyButtons(article) {
    for (const pre of article.querySelectorAll("pre")) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(pre.querySelector("code").textContent);
          button.textContent = "Copied";
        } catch {
          button.textContent = "Copy failed";
        }
        setTimeout(() => (button.textContent = "Copy"), 1500);
      });
      pre.append(button);
    }
  }

  function renderAll() {
    ui.conversation.querySelectorAll(".message").forEach((el) => el.remove());
    state.messages.forEach((message, i) => {
      const el = messageElement(message, i);
      ui.conversation.append(el);
      if (message.role === "assistant") addCopyButtons(el);
    });
    ui.empty.hidden = state.messages.length > 0;
    scrollDown(true);
  }

  function scrollDown(force) {
    const el = document.scrollingElement;
    const nearBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 120;
    if (force || nearBottom) window.scrollTo(0, el.scrollHeight);
  }

  function setBusy(busy) {
    document.body.dataset.state = busy ? "streaming" : "idle";
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    ui.newChat.disabled = busy;
    if (busy) ui.stop.focus();
    else ui.prompt.focus();
  }

  // ---- talking to the server ----------------------------------------------------------------

  async function loadModels() {
    try {
      const response = await fetch("/v1/models", { headers: headers() });
      if (!response.ok) throw new Error(await errorMessage(response));
      const ids = ((await response.json()).data || []).map((m) => m.id);
      ui.model.replaceChildren(...ids.map((id) => new Option(id, id)));
      if (ids.includes(state.settings.model)) ui.model.value = state.settings.model;
      state.settings.model = ui.model.value;
      showError("");
    } catch (exc) {
      showError(`Could not list the models: ${exc.message}`);
      if (/^401/.test(exc.message)) openSettings(true, ui.apiKey);
    }
  }

  // Yields each JSON payload of an SSE body, up to "data: [DONE]".
  async function* sseData(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      const lines = buffer.split(/\r?\n/);
      buffer = done ? "" : lines.pop();
      for (const line of lines) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
      if (done) return;
    }
  }

  function requestBody() {
    const s = state.settings;
    const messages = [];
    if (s.system.trim()) messages.push({ role: "system", content: s.system });
    for (const m of state.messages) {
      if (m.pending || (m.role === "assistant" && !m.content)) continue;
      messages.push({ role: m.role, content: m.content });
    }
    const body = { model: s.model || undefined, messages, stream: true, temperature: Number(s.temperature), ...state.extraBody };
    const maxTokens = parseInt(s.maxTokens, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    return body;
  }

  async function send(text) {
    showError("");
    state.messages.push({ role: "user", content: text });
    const body = requestBody();
    const answer = { role: "assistant", content: "", pending: true };
    state.messages.push(answer);
    saveConversation();
    renderAll();
    const article = ui.conversation.lastElementChild;
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    let frame = 0;
    const paint = () => {
      frame = 0;
      fillBody(article, answer);
      scrollDown(false);
    };
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      for await (const chunk of sseData(response)) {
        if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
        const choice = chunk.choices?.[0];
        if (!choice) continue;
        answer.content += choice.delta?.content || "";
        if (choice.finish_reason === "length") answer.note = "Stopped at the max tokens limit.";
        if (choice.finish_reason === "model_length") answer.note = "Stopped at the model's context length.";
        if (!frame) frame = requestAnimationFrame(paint);
      }
    } catch (exc) {
      if (exc.name === "AbortError") answer.note = "Stopped.";
      else answer.error = exc.message || String(exc);
    } finally {
      if (frame) cancelAnimationFrame(frame);
      state.controller = null;
      delete answer.pending;
      finish(answer, text);
      setBusy(false);
    }
  }

  // After an answer ends: keep it, or (nothing said, or an error) take the turn back.
  function finish(answer, text) {
    if (!answer.content) {
      state.messages.splice(-2, 2);
      if (!ui.prompt.value) ui.prompt.value = text;
      autosize();
    }
    if (answer.error) showError(answer.error);
    delete answer.error;
    saveConversation();
    renderAll();
  }

  // ---- settings and controls ----------------------------------------------------------------

  function showSettings() {
    const s = state.settings;
    ui.system.value = s.system;
    ui.temperature.value = s.temperature;
    ui.temperatureValue.textContent = Number(s.temperature).toFixed(2);
    ui.maxTokens.value = s.maxTokens;
    ui.apiKey.value = state.apiKey;
  }

  function openSettings(open, focus) {
    ui.settings.hidden = !open;
    ui.settingsToggle.setAttribute("aria-expanded", String(open));
    if (open && focus) focus.focus();
  }

  function autosize() {
    ui.prompt.style.height = "auto";
    const borders = ui.prompt.offsetHeight - ui.prompt.clientHeight;
    ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight + borders, window.innerHeight * 0.4)}px`;
  }

  ui.settings.addEventListener("submit", (event) => event.preventDefault());
  ui.settingsToggle.addEventListener("click", () => openSettings(ui.settings.hidden, ui.system));
  ui.system.addEventListener("input", () => ((state.settings.system = ui.system.value), saveSettings()));
  ui.temperature.addEventListener("input", () => {
    state.settings.temperature = Number(ui.temperature.value);
    ui.temperatureValue.textContent = state.settings.temperature.toFixed(2);
    saveSettings();
  });
  ui.maxTokens.addEventListener("input", () => ((state.settings.maxTokens = ui.maxTokens.value), saveSettings()));
  ui.apiKey.addEventListener("change", () => {
    state.apiKey = ui.apiKey.value.trim();
    if (state.apiKey) localStorage.setItem(KEYS.apiKey, state.apiKey);
    else localStorage.removeItem(KEYS.apiKey);
    loadModels();
  });
  ui.model.addEventListener("change", () => ((state.settings.model = ui.model.value), saveSettings()));
  ui.newChat.addEventListener("click", () => {
    state.messages = [];
    saveConversation();
    showError("");
    renderAll();
    ui.prompt.focus();
  });
  ui.errorClose.addEventListener("click", () => showError(""));
  ui.stop.addEventListener("click", () => state.controller?.abort());
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.prompt.value.trim();
    if (!text || state.controller) return;
    ui.prompt.value = "";
    autosize();
    send(text);
  });
  ui.prompt.addEventListener("input", autosize);
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) state.controller.abort();
  });
  window.addEventListener("storage", (event) => {
    if (event.key === KEYS.conversation && !state.controller) {
      state.messages = load(KEYS.conversation, []);
      renderAll();
    }
  });

  // A hook for tests and the console.
  window.mistralChat = { state, renderAll, renderMarkdown: window.renderMarkdown, send, loadModels };

  // A page closed while streaming left its turn unfinished: take it back into the message box.
  if (state.messages.at(-1)?.pending) {
    state.messages.pop();
    if (state.messages.at(-1)?.role === "user") ui.prompt.value = state.messages.pop().content;
    saveConversation();
  }
  showSettings();
  renderAll();
  loadModels();
  ui.prompt.focus();
})();
