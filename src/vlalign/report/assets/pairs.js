/* The pair viewer of a vlalign report: plain JavaScript, no build step, no network.
 *
 * data/sets.js lists the pair sets (one per pair stage); each set's rows are in data/<slug>.js, loaded
 * with a script tag when the set is chosen (a page opened from disk may load scripts, but not fetch JSON).
 * Filters narrow the rows, pages show 25 at a time, and every text goes in as text (never as HTML): the
 * helpers of viewer.js build the nodes.
 */
(function () {
  "use strict";
  const PAGE = 25;
  const ASPECTS = ["Helpfulness", "Visual Faithfulness", "Ethical Considerations"];
  const sets = window.VLALIGN_SETS || [];
  const $ = (id) => document.getElementById(id);
  const state = { set: null, rows: [], shown: [], page: 0 };

  const { el, fmt, markedText, picture } = window.VLALIGN_VIEW;

  function loadSet(slug, done) {
    window.VLALIGN_PAIRS = window.VLALIGN_PAIRS || {};
    if (window.VLALIGN_PAIRS[slug]) { done(window.VLALIGN_PAIRS[slug]); return; }
    const script = el("script", { src: "data/" + encodeURIComponent(slug) + ".js" });
    script.onload = () => done(window.VLALIGN_PAIRS[slug] || []);
    script.onerror = () => console.error("the pairs of " + slug + " could not be loaded (data/" + slug + ".js)");
    document.body.append(script);
  }

  function fillOptions(select, values) {
    while (select.options.length > 1) select.remove(1);
    for (const v of [...new Set(values.filter(Boolean))].sort()) select.append(el("option", { value: v }, v));
  }

  const modelsOf = (row) => [row.chosen.model, row.rejected.model];
  const marked = (side) => Boolean(side.marks && side.marks.length);

  function filters() {
    const gap = $("f-gap").value.trim();
    return { source: $("f-source").value, model: $("f-model").value, gap: gap === "" ? null : Number(gap),
             marks: $("f-marks").value, words: $("f-text").value.toLowerCase().split(/\s+/).filter(Boolean) };
  }

  function matches(row, f) {
    if (f.source && row.source !== f.source) return false;
    if (f.model && !modelsOf(row).includes(f.model)) return false;
    if (f.gap !== null && !(row.gap !== null && row.gap >= f.gap)) return false;
    if (f.marks === "chosen" && !marked(row.chosen)) return false;
    if (f.marks === "rejected" && !marked(row.rejected)) return false;
    if (f.marks === "none" && (marked(row.chosen) || marked(row.rejected))) return false;
    if (f.words.length) {
      const hay = [row.instruction, row.chosen.text, row.rejected.text, row.id, row.prompt_id].join("\n").toLowerCase();
      if (!f.words.every((w) => hay.includes(w))) return false;
    }
    return true;
  }

  function claimsTable(claims) {
    const body = claims.map((c) => el("tr", { class: c.rejected ? "rejected-claim" : null },
      el("td", {}, c.claim), el("td", {}, c.question), el("td", { class: "p n" }, fmt(c.p_yes)),
      el("td", {}, c.rejected ? "rejected" : "holds")));
    return el("table", { class: "claims" },
      el("thead", {}, el("tr", {}, el("th", {}, "claim"), el("th", {}, "question to the labeler"),
        el("th", {}, "P(yes)"), el("th", {}, "verdict"))), el("tbody", {}, ...body));
  }

  function ratingsTable(ratings, rationales) {
    const names = [...ASPECTS.filter((a) => a in ratings), ...Object.keys(ratings).filter((a) => !ASPECTS.includes(a))];
    return el("table", { class: "ratings" },
      el("thead", {}, el("tr", {}, el("th", {}, "aspect"), el("th", {}, "rating"), el("th", {}, "rationale"))),
      el("tbody", {}, ...names.map((a) => el("tr", {}, el("td", {}, a),
        el("td", { class: "n" }, ratings[a] === null ? "missing" : String(ratings[a]) + " / 5"),
        el("td", {}, (rationales || {})[a] || "")))));
  }

  function diffNode(diff) {
    const tags = { eq: "span", del: "del", ins: "ins" };
    return el("div", { class: "diff" }, ...diff.map(([op, text]) => el(tags[op] || "span", {}, text)));
  }

  function why(side) {
    const parts = [];
    if (side.claims) parts.push(claimsTable(side.claims));
    if (side.ratings) parts.push(ratingsTable(side.ratings, side.rationales));
    if (side.claim_texts) parts.push(el("div", { class: "muted" }, side.claim_texts.length + " claims counted: " +
      side.claim_texts.join(" | ")));
    if (side.error) parts.push(el("div", { class: "note" }, "the judge failed: " + side.error));
    return parts.length ? el("div", { class: "why" }, ...parts) : null;
  }

  function answer(side, kind) {
    const head = kind + (side.model ? " · " + side.model : "") + (side.score !== null ? " · score " + fmt(side.score, 2) : "");
    return el("div", { class: "answer " + kind }, el("h3", {}, head), markedText(side.text, side.marks), why(side));
  }

  function card(row) {
    const images = el("div", { class: "pair-images" },
      el("figure", {}, picture(row.image, "the prompt's image"),
        el("figcaption", {}, "image")),
      row.noised ? el("figure", {}, picture(row.noised, "the noised image"),
        el("figcaption", {}, row.noise + " (one draw; training draws fresh noise every batch)")) : null);
    const edits = row.edits ? el("div", { class: "why" }, el("b", {}, "injected edits: "), row.edits.join("; "),
      diffNode(row.diff)) : null;
    return el("article", { class: "pair", "data-id": row.id },
      el("div", { class: "pair-head" }, row.gap !== null ? el("span", { class: "gap" }, "score gap " + fmt(row.gap, 2)) : null,
        el("span", { class: "source" }, row.source || "no source"), el("span", {}, "prompt " + row.prompt_id), el("span", {}, "pair " + row.id)),
      el("div", { class: "instruction" }, row.instruction),
      row.reference ? el("div", { class: "reference" }, "ground truth: " + row.reference) : null,
      el("div", { class: "pair-body" }, images, answer(row.chosen, "chosen"), answer(row.rejected, "rejected")),
      edits);
  }

  function render() {
    const f = filters();
    state.shown = state.rows.filter((r) => matches(r, f));
    const pages = Math.max(1, Math.ceil(state.shown.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const slice = state.shown.slice(state.page * PAGE, (state.page + 1) * PAGE);
    $("pairs").replaceChildren(...slice.map(card));
    $("pair-count").textContent = state.shown.length + " of " + state.rows.length + " pairs";
    $("page").textContent = "page " + (state.page + 1) + " of " + pages;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  function choose(slug) {
    const header = sets.find((s) => s.slug === slug);
    loadSet(slug, (rows) => {
      state.set = header;
      state.rows = rows;
      state.page = 0;
      fillOptions($("f-source"), rows.map((r) => r.source));
      fillOptions($("f-model"), rows.flatMap(modelsOf));
      $("pair-note").textContent = header.shown < header.total ?
        "(this report holds " + header.shown + " of the stage's " + header.total + " pairs, evenly thinned)" : "";
      render();
    });
  }

  function start() {
    if (!sets.length) return;
    for (const id of ["f-source", "f-model", "f-gap", "f-marks", "f-text"]) {
      for (const kind of ["input", "change"]) $(id).addEventListener(kind, () => { state.page = 0; render(); });
    }
    $("f-set").addEventListener("change", (e) => choose(e.target.value));
    $("prev").addEventListener("click", () => { state.page -= 1; render(); window.scrollTo(0, 0); });
    $("next").addEventListener("click", () => { state.page += 1; render(); window.scrollTo(0, 0); });
    choose($("f-set").value);
  }

  start();
}());
