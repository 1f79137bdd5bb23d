/* What the report's viewers share: building nodes (every text goes in as text, never as HTML), numbers,
 * answers with their highlights, and pictures. */
(function () {
  "use strict";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c !== null && c !== undefined && c !== false) node.append(c);
    }
    return node;
  }

  function fmt(x, digits) {
    if (x === null || x === undefined) return "n/a";
    return Number.isInteger(x) ? String(x) : x.toFixed(digits === undefined ? 3 : digits);
  }

  function markedText(text, marks) {
    const node = el("div", { class: "text" });
    let pos = 0;
    for (const [start, end, kind, note] of marks || []) {
      if (start < pos) continue;
      node.append(text.slice(pos, start), el("mark", { class: kind, title: note }, text.slice(start, end)));
      pos = end;
    }
    node.append(text.slice(pos));
    return node;
  }

  function picture(src, alt) {
    const img = el("img", { src: src, alt: alt });
    img.addEventListener("load", () => { if (img.naturalWidth < 144) img.classList.add("pixelated"); });
    return img;
  }

  window.VLALIGN_VIEW = { el, fmt, markedText, picture };
}());
