// About page: the identities and recorded quality figures of the models this server runs.

import { API, api, el } from "./common.js";

function row(name, value) {
  return el("tr", {}, el("th", { scope: "row" }, name), el("td", {}, el("code", {}, String(value))));
}

function metricRows(prefix, metadata) {
  const rows = [];
  for (const [key, raw] of Object.entries(metadata || {})) {
    if (!/metric|iou|accuracy|recall|epoch|trained|dataset/i.test(key)) continue;
    let value = raw;
    try {
      const parsed = JSON.parse(raw);
      if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) {
        for (const [k, v] of Object.entries(parsed)) {
          if (typeof v === "number" || typeof v === "string") {
            rows.push(row(`${prefix} metric ${k}`, typeof v === "number" ? +v.toFixed(4) : v));
          }
        }
        continue;
      }
      value = parsed;
    } catch {
      /* plain string */
    }
    rows.push(row(`${prefix} ${key.replace(/^candidfashion\./, "")}`, value));
  }
  return rows;
}

async function init() {
  const body = document.querySelector("#facts tbody");
  const status = document.getElementById("facts-status");
  try {
    const info = await api(`${API}/info`);
    body.append(
      row("Version", info.version),
      row("Products in the catalog", info.catalog.products),
      row("Vectors in the index", info.catalog.vectors),
      row("Parser model", `${info.parser.source || "parser"} · sha256 ${String(info.parser.sha256).slice(0, 12)}`),
      row("Parser input size", (info.parser.input_size || []).join(" × ")),
      ...metricRows("Parser", info.parser.metadata),
      row("Embedder model", `${info.embedder.source || "embedder"} · sha256 ${String(info.embedder.sha256).slice(0, 12)}`),
      row("Embedding size", info.embedder.dim),
      ...metricRows("Embedder", info.embedder.metadata),
      row("Upload limit", `${Math.round(info.limits.max_upload_bytes / 1024 / 1024)} MB, ${(info.limits.max_image_pixels / 1e6).toFixed(0)} megapixels`),
    );
    status.textContent = "";
  } catch (err) {
    status.textContent = `Could not load the model information: ${err.message}`;
  }
}

init();
