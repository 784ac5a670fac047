// Minimal, self-hosted API reference rendered from /openapi.json (used when the Swagger UI
// assets are not installed; nothing is loaded from a CDN).

import { el } from "./common.js";

async function init() {
  const box = document.getElementById("endpoints");
  try {
    const spec = await (await fetch("/openapi.json")).json();
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const params = (op.parameters || []).map((p) => `${p.name}${p.required ? "" : "?"}`).join(", ");
        const body = Object.keys(op.requestBody?.content || {}).join(" or ");
        box.append(
          el(
            "div",
            { class: "card endpoint" },
            el("span", { class: "method" }, method.toUpperCase()),
            el("code", {}, path),
            el("p", {}, op.summary || ""),
            op.description ? el("p", { class: "brand" }, op.description) : null,
            params ? el("p", {}, "Parameters: ", el("code", {}, params)) : null,
            body ? el("p", {}, "Body: ", el("code", {}, body)) : null,
          ),
        );
      }
    }
  } catch (err) {
    box.textContent = `Could not load /openapi.json: ${err.message}`;
  }
}

init();
