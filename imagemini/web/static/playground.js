// imagemini playground: a chat against this server's /v1/chat/completions, streamed.
// The history is kept as the API returned it (an answer's pictures stay in its `images`), so a
// drawn picture can be edited in the next turn. No framework, no build step.
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("playground-config").textContent);
  const byId = (id) => document.getElementById(id);
  const chat = byId("chat");
  const form = byId("composer");
  if (!chat || !form) return; // a page without the playground

  const prompt = byId("prompt");
  const fileInput = byId("attach");
  const sendButton = byId("send");
  const stopButton = byId("stop");
  const note = byId("composer-note");
  const attachmentsBox = byId("attachments");
  const apiKey = byId("api-key");
  const viewer = byId("viewer");
  const KEY_STORAGE = "imagemini.apiKey";
  const PREVIEWS = 3; // image_config.partial_images: previews of each picture while it is drawn

  const history = []; // messages sent and received, as the API takes and returns them
  let pending = []; // attachments of the next message: {name, type, url}
  let controller = null;
  let pictureCount = 0;

  // --- the API key: this browser only ---------------------------------------------------------
  try {
    apiKey.value = localStorage.getItem(KEY_STORAGE) || "";
  } catch (err) {
    apiKey.value = "";
  }
  apiKey.addEventListener("input", () => {
    try {
      if (apiKey.value) localStorage.setItem(KEY_STORAGE, apiKey.value);
      else localStorage.removeItem(KEY_STORAGE);
    } catch (err) {
      showNote("This browser does not keep the key: it is used for this page only.");
    }
  });

  function showNote(text) {
    note.textContent = text;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- attachments: picker and drag-and-drop ---------------------------------------------------
  function accepted(file) {
    const isImage = file.type.startsWith("image/") && config.inputs.includes("image");
    const isPdf = (file.type === "application/pdf" || file.name.toLowerCase().endsWith(".pdf")) && config.inputs.includes("file");
    return isImage || isPdf;
  }

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  async function addFiles(files) {
    for (const file of files) {
      if (!accepted(file)) {
        showNote(`${file.name}: this model takes ${config.inputs.includes("file") ? "images and PDFs" : "images"} only.`);
        continue;
      }
      let url = await readAsDataUrl(file);
      const isPdf = !file.type.startsWith("image/");
      if (isPdf && !url.startsWith("data:application/pdf")) url = "data:application/pdf;base64," + url.split(",", 2)[1];
      pending.push({ name: file.name, type: isPdf ? "pdf" : "image", url: url });
    }
    renderAttachments();
  }

  function renderAttachments() {
    attachmentsBox.replaceChildren();
    pending.forEach((item, index) => {
      const chip = element("span", "chip");
      if (item.type === "image") {
        const img = element("img");
        img.src = item.url;
        img.alt = "";
        chip.append(img);
      }
      chip.append(element("span", "", item.name));
      const remove = element("button", "", "×");
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove ${item.name}`);
      remove.addEventListener("click", () => {
        pending.splice(index, 1);
        renderAttachments();
        prompt.focus();
      });
      chip.append(remove);
      attachmentsBox.append(chip);
    });
  }

  byId("attach-button").addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", async () => {
    await addFiles(Array.from(fileInput.files));
    fileInput.value = "";
  });
  form.addEventListener("dragover", (event) => {
    event.preventDefault();
    form.classList.add("dragging");
  });
  form.addEventListener("dragleave", () => form.classList.remove("dragging"));
  form.addEventListener("drop", async (event) => {
    event.preventDefault();
    form.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length) await addFiles(Array.from(event.dataTransfer.files));
  });

  // --- the request ---------------------------------------------------------------------------------
  function userContent(text, attachments) {
    if (!attachments.length) return text;
    const parts = attachments.map((item) =>
      item.type === "image"
        ? { type: "image_url", image_url: { url: item.url } }
        : { type: "file", file: { filename: item.name, file_data: item.url } }
    );
    if (text) parts.push({ type: "text", text: text });
    return parts;
  }

  function numberOption(id) {
    const input = byId(id);
    if (!input || input.value === "") return undefined;
    const value = Number(input.value);
    if (!Number.isFinite(value)) throw new Error(`${id}: not a number`);
    return value;
  }

  function requestBody(messages) {
    const body = { model: config.model, messages: messages, stream: true };
    const options = { temperature: numberOption("temperature"), top_p: numberOption("top_p"),
                      seed: numberOption("seed"), max_tokens: numberOption("max_tokens") };
    for (const [name, value] of Object.entries(options)) if (value !== undefined) body[name] = value;
    const modalities = byId("modalities");
    if (modalities && modalities.value !== "text") {
      body.modalities = modalities.value.split(",");
      body.image_config = { partial_images: PREVIEWS };
    }
    const effort = byId("effort");
    if (effort && effort.value) body.reasoning = { effort: effort.value };
    const schema = byId("schema").value.trim();
    if (schema) {
      let parsed;
      try {
        parsed = JSON.parse(schema);
      } catch (err) {
        throw new Error(`JSON schema: ${err.message}`);
      }
      body.response_format = { type: "json_schema", json_schema: { name: "playground", schema: parsed, strict: true } };
    }
    return body;
  }

  function headers() {
    const result = { "Content-Type": "application/json" };
    if (apiKey.value) result.Authorization = `Bearer ${apiKey.value}`;
    return result;
  }

  async function errorMessage(response) {
    try {
      const data = await response.json();
      if (data && data.error && data.error.message) return data.error.message;
    } catch (err) {
      // not JSON: say what the status was
    }
    return `HTTP ${response.status} ${response.statusText}`;
  }

  // --- turns on the page ---------------------------------------------------------------------------
  function pictureFigure(url) {
    pictureCount += 1;
    const figure = element("div", "picture");
    const open = element("button");
    open.type = "button";
    open.setAttribute("aria-label", `Enlarge picture ${pictureCount}`);
    const img = element("img");
    img.src = url;
    img.alt = `Picture ${pictureCount}, drawn by the model`;
    open.append(img);
    open.addEventListener("click", () => {
      byId("viewer-image").src = url;
      viewer.showModal();
    });
    const download = element("a", "", "Download PNG");
    download.href = url;
    download.download = `imagemini-${pictureCount}.png`;
    figure.append(open, download);
    return figure;
  }

  // A picture being drawn: shown where the picture will be, replaced by it when it is done.
  function previewFigure() {
    const figure = element("div", "picture preview");
    const img = element("img");
    img.alt = "A picture being drawn (grey: not drawn yet)";
    figure.append(img);
    return figure;
  }

  function addUserTurn(text, attachments) {
    const turn = element("div", "turn user");
    turn.append(element("div", "role", "You"));
    if (text) turn.append(element("div", "text", text));
    if (attachments.length) {
      const list = element("div", "attachment-list");
      for (const item of attachments) {
        if (item.type === "image") {
          const img = element("img");
          img.src = item.url;
          img.alt = item.name;
          list.append(img);
        } else {
          list.append(element("span", "", `📄 ${item.name}`));
        }
      }
      turn.append(list);
    }
    chat.append(turn);
    return turn;
  }

  // The answer as the API returned it: its pictures stay on it, for an edit in the next turn.
  function assistantMessage(turn) {
    const message = { role: "assistant", content: turn.content };
    if (turn.images.length) message.images = turn.images;
    if (turn.reasoning) message.reasoning = turn.reasoning;
    return message;
  }

  function reasoningBlock() {
    const block = element("details", "reasoning");
    block.append(element("summary", "", "Reasoning"), element("div", "text"));
    return block;
  }

  function usageText(usage) {
    const details = usage.completion_tokens_details || {};
    const extra = [];
    if (details.image_tokens) extra.push(`${details.image_tokens} image`);
    if (details.reasoning_tokens) extra.push(`${details.reasoning_tokens} reasoning`);
    const cost = typeof usage.cost === "number" ? ` · $${usage.cost.toFixed(6)}` : "";
    return `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens` +
      (extra.length ? ` (${extra.join(", ")})` : "") + cost;
  }

  function addAssistantTurn() {
    const node = element("div", "turn assistant");
    node.append(element("div", "role", "Model"));
    const text = element("div", "text");
    node.append(text);
    const status = element("div", "status", "…");
    node.append(status);
    chat.append(node);
    let reasoningText = null;
    let pictures = null;
    const previews = new Map(); // picture index -> its preview's figure, until the picture comes
    node.dataset.previewRenders = "0"; // previews shown so far: what tests read instead of timing
    function picturesBox() {
      if (!pictures) {
        pictures = element("div", "pictures");
        node.insertBefore(pictures, status);
      }
      return pictures;
    }
    const turn = {
      node: node,
      content: "",
      reasoning: "",
      images: [],
      cutShort: false,
      addText(piece) {
        turn.content += piece;
        text.textContent = turn.content;
      },
      addReasoning(piece) {
        if (!reasoningText) {
          const block = reasoningBlock();
          reasoningText = block.querySelector(".text");
          node.insertBefore(block, text);
        }
        turn.reasoning += piece;
        reasoningText.textContent = turn.reasoning;
      },
      addImages(images) {
        const box = picturesBox();
        for (const image of images) {
          const figure = pictureFigure(image.image_url.url);
          const preview = previews.get(turn.images.length);
          if (preview) preview.replaceWith(figure);
          else box.append(figure);
          previews.delete(turn.images.length);
          turn.images.push(image);
        }
      },
      showPreviews(items) {
        const box = picturesBox();
        for (const item of items) {
          let figure = previews.get(item.index);
          if (!figure) {
            figure = previewFigure();
            previews.set(item.index, figure);
            box.append(figure);
          }
          figure.querySelector("img").src = item.image_url.url;
          node.dataset.previewRenders = String(Number(node.dataset.previewRenders) + 1);
        }
      },
      setUsage(usage) {
        node.append(element("div", "usage", usageText(usage)));
      },
      finish(state) {
        status.textContent = state;
      },
      fail(message) {
        node.classList.add("error");
        const line = element("div", "error-message", message);
        line.setAttribute("role", "alert");
        node.insertBefore(line, status);
        status.textContent = "failed";
      },
    };
    return turn;
  }

  // --- the stream ----------------------------------------------------------------------------------
  function handleEvent(turn, event) {
    const data = event.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trimStart()).join("\n");
    if (!data || data === "[DONE]") return "done";
    const chunk = JSON.parse(data);
    if (chunk.error) {
      turn.fail(chunk.error.message);
      return "error";
    }
    for (const choice of chunk.choices || []) {
      if (choice.index !== 0) continue;
      const delta = choice.delta || {};
      if (delta.reasoning) turn.addReasoning(delta.reasoning);
      if (delta.content) turn.addText(delta.content);
      if (delta.image_previews) turn.showPreviews(delta.image_previews);
      if (delta.images) turn.addImages(delta.images);
      if (choice.finish_reason === "length") turn.cutShort = true;
    }
    if (chunk.usage) turn.setUsage(chunk.usage);
    return "more";
  }

  async function readStream(turn, response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let outcome = "more";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        outcome = handleEvent(turn, event);
        if (outcome === "error") return outcome;
      }
    }
    return outcome;
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.disabled = !busy;
  }

  async function send() {
    const text = prompt.value.trim();
    if (!text && !pending.length) {
      showNote("Type a message or attach a file.");
      return;
    }
    const message = { role: "user", content: userContent(text, pending) };
    let body;
    try {
      body = requestBody([...history, message]);
    } catch (err) {
      showNote(err.message);
      return;
    }
    showNote("");
    const userTurn = addUserTurn(text, pending);
    pending = [];
    renderAttachments();
    prompt.value = "";
    const turn = addAssistantTurn();
    controller = new AbortController();
    setBusy(true);
    let outcome = "error";
    try {
      const response = await fetch(`${config.api}/chat/completions`, {
        method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!response.ok) turn.fail(await errorMessage(response));
      else outcome = await readStream(turn, response);
    } catch (err) {
      if (err.name === "AbortError") {
        outcome = "stopped";
      } else {
        turn.fail(`The request failed: ${err.message}`);
      }
    } finally {
      controller = null;
      setBusy(false);
    }
    if (outcome === "error") {
      userTurn.classList.add("unsent");
      userTurn.append(element("div", "status", "not sent: fix the problem and send again"));
      return;
    }
    history.push(message, assistantMessage(turn));
    turn.finish(outcome === "stopped" ? "stopped" : turn.cutShort ? "stopped at the token limit" : "");
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!sendButton.disabled) send();
    }
  });
  stopButton.addEventListener("click", () => {
    if (controller) controller.abort();
  });
  byId("clear").addEventListener("click", () => {
    if (controller) controller.abort();
    history.length = 0;
    pending = [];
    renderAttachments();
    chat.replaceChildren();
    showNote("");
    prompt.focus();
  });

  // --- examples and code -----------------------------------------------------------------------------
  for (const button of document.querySelectorAll("button.example")) {
    button.addEventListener("click", () => {
      prompt.value = button.dataset.prompt;
      const modalities = byId("modalities");
      if (modalities && button.dataset.modalities) modalities.value = button.dataset.modalities;
      prompt.focus();
    });
  }
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      const code = button.parentElement.querySelector("code").textContent;
      try {
        await navigator.clipboard.writeText(code);
        button.textContent = "Copied";
      } catch (err) {
        button.textContent = "Select and copy";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
  }
})();
