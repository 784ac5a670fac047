// Shared helpers for the CandidFashion pages: API calls with the server's error shape,
// safe DOM building (text only, never innerHTML with data), and formatting.

export const API = "/api/v1";

/** An error from the API, carrying its stable code. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorFrom(response) {
  let code = "http_" + response.status;
  let message = `The server answered ${response.status}.`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    /* not JSON: keep the generic message */
  }
  return new ApiError(response.status, code, message);
}

/** GET or POST JSON; throws ApiError with the server's message on failure. */
export async function api(path, { method = "GET", json, body, signal } = {}) {
  const init = { method, signal, headers: { Accept: "application/json" } };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "Cannot reach the server. Check your connection and try again.");
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

/** Upload a form with progress callbacks (fetch cannot report upload progress). */
export function uploadForm(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.responseType = "text";
    xhr.upload.addEventListener("progress", (ev) => {
      if (ev.lengthComputable) onProgress("upload", ev.loaded / ev.total);
    });
    xhr.upload.addEventListener("load", () => onProgress("processing", 1));
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* handled below */
      }
      if (xhr.status >= 200 && xhr.status < 300 && body) {
        resolve(body);
      } else if (body && body.error) {
        reject(new ApiError(xhr.status, body.error.code, body.error.message));
      } else {
        reject(new ApiError(xhr.status, "http_" + xhr.status, `The server answered ${xhr.status}.`));
      }
    });
    xhr.addEventListener("error", () =>
      reject(new ApiError(0, "network", "The upload failed: the server could not be reached.")),
    );
    xhr.send(form);
  });
}

/** Create an element with attributes and children (strings become text nodes). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function formatPrice(price, currency) {
  if (price === null || price === undefined) return null;
  if (currency && /^[A-Z]{3}$/.test(currency)) {
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(price);
    } catch {
      /* unknown currency code: fall through */
    }
  }
  return `${Number(price).toFixed(2)}${currency ? " " + currency : ""}`;
}

export function titleCase(text) {
  return text ? text.charAt(0).toUpperCase() + text.slice(1) : "";
}

/** Only web links may become hrefs (a catalog must not inject javascript: URLs). */
export function safeHref(url) {
  return typeof url === "string" && /^https?:\/\//i.test(url) ? url : null;
}

/** A product card shared by the look page and the catalog page. */
export function productCard(product, { extraActions = [] } = {}) {
  const price = formatPrice(product.price, product.currency);
  const href = safeHref(product.url);
  const img = el("img", {
    src: product.image_url,
    alt: product.title,
    loading: "lazy",
    decoding: "async",
    width: 300,
    height: 300,
  });
  const meta = el(
    "div",
    { class: "meta" },
    el("span", { class: "badge" + (product.in_stock ? "" : " out") }, product.in_stock ? "In stock" : "Out of stock"),
    typeof product.score === "number" ? el("span", { title: "Visual similarity" }, `${Math.round(product.score * 100)}% match`) : null,
  );
  const actions = el(
    "div",
    { class: "actions" },
    href
      ? el(
          "a",
          {
            class: "button primary",
            href,
            target: "_blank",
            rel: "noopener noreferrer",
            "aria-label": `Buy ${product.title} (opens the shop in a new tab)`,
          },
          "Buy ↗",
        )
      : null,
    ...extraActions,
  );
  return el(
    "li",
    { class: "card product", "data-product-id": product.id },
    el("div", { class: "thumb" }, img),
    el(
      "div",
      { class: "body" },
      el("p", { class: "title" }, product.title),
      product.brand ? el("span", { class: "brand" }, product.brand) : null,
      price ? el("span", { class: "price" }, price) : el("span", { class: "price unknown" }, "price not listed"),
      meta,
      actions,
    ),
  );
}
