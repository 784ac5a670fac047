// Shop-the-look page: upload (picker, drag-and-drop, paste, demo photo), draw each item's
// outline from its RLE mask, and refine one item's matches without uploading again.

import { API, ApiError, api, el, productCard, titleCase, uploadForm } from "./common.js";

const $ = (id) => document.getElementById(id);

const state = {
  look: null,
  selected: null, // item index
  categories: [], // [{name, count, colour}]
  colours: [], // [{name, hex}]
  colour: null, // chosen colour name
  maxBytes: 15 * 1024 * 1024,
  masks: new Map(), // item index -> {w, h, data: Uint8Array}
  busy: false,
};

const FRIENDLY = {
  too_large: "That photo is too large.",
  too_many_pixels: "That photo has too many pixels.",
  not_an_image: "That file is not a photo we can read. Try a JPEG, PNG or WebP image.",
  unsupported_media_type: "That file type is not supported. Try a JPEG, PNG or WebP image.",
  empty: "That file is empty.",
  truncated: "That photo is incomplete (the file is cut off). Try saving or uploading it again.",
  too_small: "That image is too small to find clothes in.",
  not_ready: "The server is still loading its models. Try again in a moment.",
  look_not_found: "This look has expired. Upload the photo again.",
};

// --- status & errors -----------------------------------------------------------------

function setStatus(text, progress = null) {
  const box = $("status");
  box.replaceChildren();
  if (!text) return;
  if (progress !== null) {
    const bar = el("div", { class: "progress" + (progress < 0 ? " indeterminate" : ""), "aria-hidden": "true" }, el("span"));
    if (progress >= 0) bar.firstChild.style.width = `${Math.round(progress * 100)}%`;
    box.append(bar);
  }
  box.append(el("span", {}, text));
}

function showError(err) {
  const box = $("error");
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const friendly = err instanceof ApiError ? FRIENDLY[err.code] : null;
  const detail = err.message || String(err);
  box.textContent = friendly && friendly !== detail ? `${friendly} (${detail})` : detail;
  box.hidden = false;
}

// --- upload ------------------------------------------------------------------------------

async function uploadPhoto(file) {
  if (state.busy) return;
  showError(null);
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(new ApiError(415, "unsupported_media_type", `${file.name || "The file"} is ${file.type}, not an image.`));
    return;
  }
  if (file.size > state.maxBytes) {
    const mb = (n) => (n / 1024 / 1024).toFixed(1);
    showError(new ApiError(413, "too_large", `${mb(file.size)} MB is over the ${mb(state.maxBytes)} MB limit.`));
    return;
  }
  state.busy = true;
  document.body.setAttribute("aria-busy", "true");
  $("pick-button").disabled = true;
  const form = new FormData();
  form.append("photo", file, file.name || "photo.jpg");
  form.append("k", "12");
  setStatus("Uploading…", 0);
  try {
    const look = await uploadForm(`${API}/looks`, form, (phase, fraction) => {
      if (phase === "upload") setStatus("Uploading…", fraction);
      else setStatus("Finding the clothes in your photo…", -1);
    });
    await showLook(look, file);
    const n = look.items.length;
    setStatus(n ? `Found ${n} item${n === 1 ? "" : "s"}.` : "");
  } catch (err) {
    setStatus("");
    showError(err);
  } finally {
    state.busy = false;
    document.body.removeAttribute("aria-busy");
    $("pick-button").disabled = false;
  }
}

function fileFromClipboard(event) {
  for (const item of event.clipboardData?.items || []) {
    if (item.kind === "file" && item.type.startsWith("image/")) return item.getAsFile();
  }
  return null;
}

async function loadDemos() {
  let photos = [];
  try {
    photos = (await api(`${API}/demo/photos`)).photos;
  } catch {
    return; // demo photos are optional
  }
  if (!photos.length) return;
  const list = $("demo-list");
  for (const photo of photos) {
    const button = el(
      "button",
      { type: "button", "aria-label": `Use example photo: ${photo.name}`, "data-demo": photo.index },
      el("img", { src: photo.url, alt: "", loading: "lazy", width: 64, height: 84 }),
    );
    button.addEventListener("click", async () => {
      if (state.busy) return;
      showError(null);
      setStatus("Loading the example photo…", -1);
      try {
        const response = await fetch(photo.url);
        if (!response.ok) throw new ApiError(response.status, "demo", "The example photo could not be loaded.");
        const blob = await response.blob();
        await uploadPhoto(new File([blob], `${photo.name}.jpg`, { type: blob.type || "image/jpeg" }));
      } catch (err) {
        setStatus("");
        showError(err);
      }
    });
    list.append(el("li", {}, button));
  }
  $("demos").hidden = false;
}

// --- masks & overlay ---------------------------------------------------------------------

function decodeRle(rle) {
  // COCO uncompressed RLE over column-major pixels, zeros first -> row-major bytes.
  const [h, w] = rle.size;
  const data = new Uint8Array(w * h);
  let pos = 0;
  let value = 0;
  for (const count of rle.counts) {
    if (value) {
      for (let p = pos; p < pos + count; p++) {
        const x = Math.floor(p / h);
        const y = p - x * h;
        data[y * w + x] = 1;
      }
    }
    pos += count;
    value ^= 1;
  }
  return { w, h, data };
}

function hexToRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

function categoryColour(name) {
  return state.categories.find((c) => c.name === name)?.colour || "#2b59c3";
}

function drawOverlay() {
  const look = state.look;
  const img = $("photo");
  const canvas = $("overlay");
  if (!look || !img.complete || !img.clientWidth) return;
  const dpr = window.devicePixelRatio || 1;
  const cw = Math.round(img.clientWidth * dpr);
  const ch = Math.round(img.clientHeight * dpr);
  canvas.width = cw;
  canvas.height = ch;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, cw, ch);
  const scale = cw / look.width;
  const thick = Math.max(2, Math.round(2.5 * dpr));
  // Selected item last, so its outline sits on top.
  const order = [...look.items].sort((a, b) => (a.index === state.selected) - (b.index === state.selected));
  const labels = [];
  for (const item of order) {
    const mask = state.masks.get(item.index);
    const [x0, y0, x1, y1] = item.box;
    const bx0 = Math.floor(x0 * scale);
    const by0 = Math.floor(y0 * scale);
    const bw = Math.max(1, Math.ceil(x1 * scale) - bx0);
    const bh = Math.max(1, Math.ceil(y1 * scale) - by0);
    // Sample the mask at display resolution so outlines stay crisp at any zoom.
    const inside = new Uint8Array(bw * bh);
    for (let y = 0; y < bh; y++) {
      const my = Math.min(mask.h - 1, Math.floor((by0 + y + 0.5) / scale) - y0);
      if (my < 0) continue;
      for (let x = 0; x < bw; x++) {
        const mx = Math.min(mask.w - 1, Math.floor((bx0 + x + 0.5) / scale) - x0);
        if (mx >= 0 && mask.data[my * mask.w + mx]) inside[y * bw + x] = 1;
      }
    }
    const selected = item.index === state.selected;
    const [r, g, b] = hexToRgb(categoryColour(item.category));
    const image = ctx.createImageData(bw, bh);
    const px = image.data;
    for (let y = 0; y < bh; y++) {
      for (let x = 0; x < bw; x++) {
        const i = y * bw + x;
        if (!inside[i]) continue;
        let edge = false;
        for (let d = 1; d <= thick && !edge; d++) {
          edge =
            x < d || y < d || x >= bw - d || y >= bh - d ||
            !inside[i - d] || !inside[i + d] || !inside[i - d * bw] || !inside[i + d * bw];
        }
        const o = i * 4;
        px[o] = r;
        px[o + 1] = g;
        px[o + 2] = b;
        px[o + 3] = edge ? 255 : selected ? 90 : state.selected === null ? 45 : 0;
      }
    }
    const layer = document.createElement("canvas");
    layer.width = bw;
    layer.height = bh;
    layer.getContext("2d").putImageData(image, 0, 0);
    ctx.globalAlpha = selected || state.selected === null ? 1 : 0.55;
    // A light halo keeps dark outlines visible on dark clothes.
    ctx.shadowColor = "rgba(255, 255, 255, 0.95)";
    ctx.shadowBlur = (selected ? 5 : 3) * dpr;
    ctx.drawImage(layer, bx0, by0);
    ctx.shadowBlur = 0;
    ctx.shadowColor = "transparent";
    ctx.globalAlpha = 1;
    labels.push({ item, bx0, by0, r, g, b, selected });
  }
  drawLabels(ctx, labels, cw, ch, dpr);
}

function drawLabels(ctx, labels, cw, ch, dpr) {
  // Label pills at each item's top-left corner, nudged down so none overlap.
  const placed = [];
  const lh = Math.round(20 * dpr);
  ctx.font = `600 ${Math.round(12 * dpr)}px system-ui, sans-serif`;
  for (const { item, bx0, by0, r, g, b, selected } of labels) {
    const label = `${item.index + 1} ${item.category}`;
    const w = ctx.measureText(label).width + 12 * dpr;
    const lx = Math.min(Math.max(0, bx0), cw - w);
    let ly = Math.max(0, by0 - lh - 2 * dpr);
    const hits = (y) => placed.some((p) => lx < p.x + p.w && p.x < lx + w && y < p.y + lh + 2 && p.y < y + lh + 2);
    while (hits(ly) && ly + lh < ch) ly += lh + 3 * dpr;
    placed.push({ x: lx, y: ly, w });
    ctx.fillStyle = `rgba(${r}, ${g}, ${b}, ${selected ? 1 : 0.92})`;
    ctx.beginPath();
    ctx.roundRect(lx, ly, w, lh, 6 * dpr);
    ctx.fill();
    if (selected) {
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 1.5 * dpr;
      ctx.stroke();
    }
    ctx.fillStyle = r * 0.299 + g * 0.587 + b * 0.114 > 160 ? "#111" : "#fff";
    ctx.fillText(label, lx + 6 * dpr, ly + lh * 0.7);
  }
}

function itemAt(event) {
  const look = state.look;
  const canvas = $("overlay");
  const rect = canvas.getBoundingClientRect();
  const px = ((event.clientX - rect.left) / rect.width) * look.width;
  const py = ((event.clientY - rect.top) / rect.height) * look.height;
  // A few display pixels of slack, so a click on a thin strap or an outline still counts.
  const slack = Math.max(1, Math.round((3 * look.width) / rect.width));
  const inMask = (item, x, y) => {
    const [x0, y0, x1, y1] = item.box;
    if (x < x0 || x >= x1 || y < y0 || y >= y1) return false;
    const mask = state.masks.get(item.index);
    return mask.data[Math.floor(y - y0) * mask.w + Math.floor(x - x0)] === 1;
  };
  const offsets = [[0, 0], [slack, 0], [-slack, 0], [0, slack], [0, -slack]];
  // Smallest item under the pointer wins (a bag over a coat).
  const hits = look.items
    .filter((item) => offsets.some(([dx, dy]) => inMask(item, px + dx, py + dy)))
    .sort((a, b) => a.area - b.area);
  return hits[0] || null;
}

// --- look rendering ------------------------------------------------------------------------

async function showLook(look, file) {
  state.look = look;
  state.masks = new Map(look.items.map((item) => [item.index, decodeRle(item.mask)]));
  state.selected = null;
  const img = $("photo");
  if (img.dataset.objectUrl) URL.revokeObjectURL(img.dataset.objectUrl);
  const url = URL.createObjectURL(file);
  img.dataset.objectUrl = url;
  await new Promise((resolve) => {
    img.onload = resolve;
    img.onerror = resolve;
    img.src = url;
  });
  $("look").hidden = false;
  // Server-side stage timings, for the curious (also in /metrics).
  $("photo-wrap").title = Object.entries(look.timings)
    .map(([k, v]) => `${k.replace("_ms", "")}: ${Math.round(v)} ms`)
    .join(", ");
  renderChips();
  if (look.items.length) {
    const first = look.items.find((i) => i.category === "outerwear") || look.items[0];
    selectItem(first.index);
  } else {
    $("item-panel").hidden = true;
    drawOverlay();
    setStatus("No clothes found in this photo. Try one where the person is fully visible.");
  }
  $("look").scrollIntoView({ behavior: "smooth", block: "start" });
}

function renderChips() {
  const chips = $("chips");
  chips.replaceChildren();
  for (const item of state.look.items) {
    const button = el(
      "button",
      {
        type: "button",
        class: "chip",
        "aria-pressed": String(item.index === state.selected),
        "data-item": item.index,
        "data-category": item.category,
        "aria-label": `Item ${item.index + 1}: ${item.category}`,
        onclick: () => selectItem(item.index),
      },
      el("span", { class: "dot", style: `background:${categoryColour(item.category)}`, "aria-hidden": "true" }),
      `${item.index + 1} · ${titleCase(item.category)}`,
    );
    chips.append(el("li", {}, button));
  }
}

function selectItem(index) {
  state.selected = index;
  const item = state.look.items.find((i) => i.index === index);
  for (const chip of document.querySelectorAll("#chips .chip")) {
    chip.setAttribute("aria-pressed", String(Number(chip.dataset.item) === index));
  }
  $("item-panel").hidden = false;
  $("cutout").src = item.cutout_url;
  $("cutout").alt = `Cut-out of the ${item.category}`;
  $("item-title").textContent = `${index + 1} · ${titleCase(item.category)}`;
  $("item-sub").textContent = `Confidence ${Math.round(item.score * 100)}%`;
  const dots = $("item-colours");
  dots.replaceChildren(
    ...item.colours.map((c) =>
      el("span", { class: "sw", style: `background:${c.hex}`, title: `${c.name} (${Math.round(c.fraction * 100)}%)` }),
    ),
    item.colours.length ? el("span", {}, item.colours.map((c) => c.name).join(", ")) : null,
  );
  const outline = $("outline-wrong");
  outline.textContent = "Outline is wrong";
  outline.disabled = false;
  outline.className = "";
  resetFilters(item);
  renderResults(item.products);
  drawOverlay();
}

function renderResults(products) {
  const list = $("results");
  list.replaceChildren();
  if (!products.length) {
    list.append(el("li", { class: "empty" }, "No products match these filters. Try widening the price range or another colour."));
    return;
  }
  for (const product of products) {
    const good = el("button", { type: "button", "aria-label": `Good match: ${product.title}` }, icon("check"), "Good");
    const wrong = el("button", { type: "button", "aria-label": `Wrong match: ${product.title}` }, icon("cross"), "Wrong");
    good.addEventListener("click", () => sendFeedback("good", product.id, good, wrong));
    wrong.addEventListener("click", () => sendFeedback("wrong", product.id, wrong, good));
    list.append(productCard(product, { extraActions: [good, wrong] }));
  }
}

const ICONS = { check: "M3 8.5l3.2 3.2L13 5", cross: "M4 4l8 8M12 4l-8 8" };

/** A small stroke icon (inline SVG: no emoji font or icon font needed). */
function icon(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("class", "icon");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", ICONS[name]);
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", "currentColor");
  path.setAttribute("stroke-width", "2");
  path.setAttribute("stroke-linecap", "round");
  svg.append(path);
  return svg;
}

async function sendFeedback(verdict, productId, button, other) {
  try {
    await api(`${API}/feedback`, {
      method: "POST",
      json: { look_id: state.look.id, item: state.selected, verdict, product_id: productId },
    });
    button.classList.add(verdict === "wrong" ? "voted-wrong" : "voted-good");
    button.setAttribute("aria-pressed", "true");
    button.disabled = true;
    if (other) other.disabled = true;
    setStatus("Thanks, your feedback was saved.");
  } catch (err) {
    showError(err);
  }
}

// --- refine --------------------------------------------------------------------------------

function buildRefineControls() {
  const select = $("f-category");
  select.replaceChildren(
    ...state.categories.map((c) => el("option", { value: c.name }, `${titleCase(c.name)}${c.count ? ` (${c.count})` : ""}`)),
  );
  const swatches = $("swatches");
  const any = el("button", { type: "button", class: "swatch any", "aria-pressed": "true", "data-colour": "" }, "Any colour");
  swatches.replaceChildren(
    any,
    ...state.colours.map((c) =>
      el("button", {
        type: "button",
        class: "swatch",
        style: `background:${c.hex}`,
        title: titleCase(c.name),
        "aria-label": `Colour: ${c.name}`,
        "aria-pressed": "false",
        "data-colour": c.name,
      }),
    ),
  );
  swatches.addEventListener("click", (event) => {
    const button = event.target.closest("button.swatch");
    if (!button) return;
    setColour(button.dataset.colour || null);
    refine();
  });
}

function setColour(name) {
  state.colour = name;
  for (const sw of document.querySelectorAll("#swatches .swatch")) {
    sw.setAttribute("aria-pressed", String((sw.dataset.colour || null) === name));
  }
}

function resetFilters(item) {
  $("f-category").value = item.category;
  $("f-min").value = "";
  $("f-max").value = "";
  $("f-stock").checked = false;
  $("f-keyword").value = "";
  setColour(null);
}

let refineController = null;

async function refine() {
  if (!state.look || state.selected === null) return;
  showError(null);
  const body = { look_id: state.look.id, item: state.selected, k: 12, category: $("f-category").value };
  const min = $("f-min").value.trim();
  const max = $("f-max").value.trim();
  if (min) body.min_price = Number(min);
  if (max) body.max_price = Number(max);
  if (min && max && Number(min) > Number(max)) {
    showError(new Error("The minimum price is higher than the maximum price."));
    return;
  }
  if ($("f-stock").checked) body.in_stock = true;
  const keyword = $("f-keyword").value.trim();
  if (keyword) body.keyword = keyword;
  if (state.colour) body.colour = state.colour;
  refineController?.abort();
  refineController = new AbortController();
  setStatus("Updating matches…", -1);
  $("results").setAttribute("aria-busy", "true");
  try {
    const result = await api(`${API}/items/search`, { method: "POST", json: body, signal: refineController.signal });
    renderResults(result.products);
    const n = result.products.length;
    setStatus(`${n} match${n === 1 ? "" : "es"}${state.colour ? ` in ${state.colour}` : ""}.`);
  } catch (err) {
    if (err.name === "AbortError") return;
    setStatus("");
    showError(err);
  } finally {
    $("results").removeAttribute("aria-busy");
  }
}

// --- wiring ----------------------------------------------------------------------------

async function init() {
  const input = $("file-input");
  $("pick-button").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    const file = input.files?.[0];
    input.value = "";
    uploadPhoto(file);
  });
  const zone = $("dropzone");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer?.files?.[0];
    if (file) uploadPhoto(file);
  });
  // Dropping a file anywhere else must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.addEventListener("paste", (event) => {
    const file = fileFromClipboard(event);
    if (file) {
      event.preventDefault();
      uploadPhoto(file);
    }
  });

  $("overlay").addEventListener("click", (event) => {
    const item = itemAt(event);
    if (item) selectItem(item.index);
  });
  $("refine").addEventListener("submit", (event) => {
    event.preventDefault();
    refine();
  });
  $("f-category").addEventListener("change", refine);
  $("f-stock").addEventListener("change", refine);
  $("reset").addEventListener("click", () => {
    const item = state.look?.items.find((i) => i.index === state.selected);
    if (!item) return;
    resetFilters(item);
    renderResults(item.products);
    setStatus("");
  });
  $("outline-wrong").addEventListener("click", async () => {
    const button = $("outline-wrong");
    try {
      await api(`${API}/feedback`, {
        method: "POST",
        json: { look_id: state.look.id, item: state.selected, verdict: "outline_wrong" },
      });
      button.textContent = "Thanks, noted";
      button.className = "voted-wrong";
      button.disabled = true;
    } catch (err) {
      showError(err);
    }
  });
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawOverlay, 100);
  });

  try {
    const meta = await api(`${API}/categories`);
    state.categories = meta.categories;
    state.colours = meta.colours;
    if (meta.limits?.max_upload_bytes) {
      state.maxBytes = meta.limits.max_upload_bytes;
      $("limits-hint").textContent = `JPEG, PNG or WebP, up to ${Math.round(state.maxBytes / 1024 / 1024)} MB`;
    }
  } catch (err) {
    showError(err);
  }
  buildRefineControls();
  loadDemos();
}

init();
