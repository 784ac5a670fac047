// Catalog page: browse by category or keyword-search the products, a page at a time.

import { API, api, el, productCard, titleCase } from "./common.js";

const $ = (id) => document.getElementById(id);
const PAGE = 24;
const state = { q: "", category: "", offset: 0, total: null };

function readUrl() {
  const params = new URLSearchParams(location.search);
  state.q = params.get("q") || "";
  state.category = params.get("category") || "";
  state.offset = Math.max(0, Number(params.get("offset")) || 0);
  $("q").value = state.q;
}

function writeUrl() {
  const params = new URLSearchParams();
  if (state.q) params.set("q", state.q);
  if (state.category) params.set("category", state.category);
  if (state.offset) params.set("offset", String(state.offset));
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

async function load() {
  const error = $("error");
  error.hidden = true;
  $("status").textContent = "Loading…";
  const params = new URLSearchParams({ limit: String(PAGE), offset: String(state.offset) });
  if (state.q) params.set("q", state.q);
  if (state.category) params.set("category", state.category);
  try {
    const page = await api(`${API}/products?${params}`);
    state.total = page.total;
    const list = $("results");
    list.replaceChildren(...page.products.map((p) => productCard(p)));
    if (!page.products.length) list.append(el("li", { class: "empty" }, "No products found."));
    const first = page.products.length ? state.offset + 1 : 0;
    const last = state.offset + page.products.length;
    const total = page.total ?? last;
    $("status").textContent = page.products.length ? `Showing ${first}–${last} of ${total}` : "";
    $("page-info").textContent = total > PAGE ? `Page ${Math.floor(state.offset / PAGE) + 1} of ${Math.ceil(total / PAGE)}` : "";
    $("prev").disabled = state.offset === 0;
    $("next").disabled = last >= total;
    writeUrl();
  } catch (err) {
    $("status").textContent = "";
    error.textContent = err.message;
    error.hidden = false;
  }
}

async function init() {
  readUrl();
  try {
    const meta = await api(`${API}/categories`);
    const select = $("category");
    for (const c of meta.categories) {
      if (c.count) select.append(el("option", { value: c.name }, `${titleCase(c.name)} (${c.count})`));
    }
    select.value = state.category;
  } catch {
    /* the product list below reports the error */
  }
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.q = $("q").value.trim();
    state.category = $("category").value;
    state.offset = 0;
    load();
  });
  $("category").addEventListener("change", () => {
    state.category = $("category").value;
    state.offset = 0;
    load();
  });
  $("prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE);
    load();
  });
  $("next").addEventListener("click", () => {
    state.offset += PAGE;
    load();
  });
  load();
}

init();
