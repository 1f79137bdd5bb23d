/* The group viewer of a vlalign report (an online run's rollouts): plain JavaScript, no build step, no network.
 *
 * data/group-sets.js lists the rollouts; each one's groups are in data/<slug>.js, loaded with a script tag
 * when it is chosen. A group shows its prompt and its answers best first, each with its reward, advantage,
 * reward components and claims. Filters narrow the groups, pages show 10 at a time, and every text goes in
 * as text (never as HTML): the helpers of viewer.js build the nodes.
 */
(function () {
  "use strict";
  const PAGE = 10;
  const sets = window.VLALIGN_GROUP_SETS || [];
  const $ = (id) => document.getElementById(id);
  const state = { rows: [], shown: [], page: 0 };

  const { el, markedText, picture } = window.VLALIGN_VIEW;
  const fmt = (x) => window.VLALIGN_VIEW.fmt(x, 2);

  function claims(list) {
    if (!list.length) return null;
    return el("div", { class: "claims muted" }, ...list.flatMap(([claim, rejected], i) =>
      [i ? " · " : "", el("span", { class: rejected ? "rejected-claim" : null }, claim)]));
  }

  function answerRow(a) {
    const values = Object.entries(a.values).map(([k, v]) => k + " " + fmt(v)).join(", ");
    return el("tr", {}, el("td", { class: "n" }, fmt(a.reward)), el("td", { class: "n" }, fmt(a.advantage)),
      el("td", { class: "muted" }, values), el("td", {}, markedText(a.text, a.marks), claims(a.claims)));
  }

  function card(row) {
    const table = el("table", { class: "group" },
      el("thead", {}, el("tr", {}, el("th", {}, "reward"), el("th", {}, "advantage"), el("th", {}, "components"),
        el("th", {}, "answer and its claims"))),
      el("tbody", {}, ...row.answers.map(answerRow)));
    const img = picture(row.image, "the prompt's image");
    return el("article", { class: "pair", "data-id": row.id },
      el("div", { class: "pair-head" }, el("span", { class: "gap" }, "reward spread " + fmt(row.spread)),
        el("span", { class: "source" }, row.source || "no source"), el("span", {}, "prompt " + row.id)),
      el("div", { class: "instruction" }, row.instruction),
      el("div", { class: "group-body" }, el("div", { class: "pair-images" }, img), table));
  }

  function matches(row) {
    const source = $("g-source").value;
    const spread = $("g-spread").value.trim();
    const words = $("g-text").value.toLowerCase().split(/\s+/).filter(Boolean);
    if (source && row.source !== source) return false;
    if (spread !== "" && !(row.spread >= Number(spread))) return false;
    const hay = [row.instruction, row.id, ...row.answers.map((a) => a.text)].join("\n").toLowerCase();
    return words.every((w) => hay.includes(w));
  }

  function render() {
    state.shown = state.rows.filter(matches);
    const pages = Math.max(1, Math.ceil(state.shown.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    $("groups").replaceChildren(...state.shown.slice(state.page * PAGE, (state.page + 1) * PAGE).map(card));
    $("group-count").textContent = state.shown.length + " of " + state.rows.length + " groups";
    $("page").textContent = "page " + (state.page + 1) + " of " + pages;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  function choose(slug) {
    const header = sets.find((s) => s.slug === slug);
    window.VLALIGN_GROUPS = window.VLALIGN_GROUPS || {};
    const show = () => {
      state.rows = window.VLALIGN_GROUPS[slug] || [];
      state.page = 0;
      const select = $("g-source");
      while (select.options.length > 1) select.remove(1);
      for (const v of [...new Set(state.rows.map((r) => r.source).filter(Boolean))].sort()) {
        select.append(el("option", { value: v }, v));
      }
      $("group-note").textContent = header.shown < header.total ?
        "(this report holds " + header.shown + " of the rollout's " + header.total + " groups, evenly thinned)" : "";
      render();
    };
    if (window.VLALIGN_GROUPS[slug]) { show(); return; }
    const script = el("script", { src: "data/" + encodeURIComponent(slug) + ".js" });
    script.onload = show;
    script.onerror = () => console.error("the groups of " + slug + " could not be loaded (data/" + slug + ".js)");
    document.body.append(script);
  }

  if (!sets.length) return;
  for (const id of ["g-source", "g-spread", "g-text"]) {
    for (const kind of ["input", "change"]) $(id).addEventListener(kind, () => { state.page = 0; render(); });
  }
  $("g-set").addEventListener("change", (e) => choose(e.target.value));
  $("prev").addEventListener("click", () => { state.page -= 1; render(); window.scrollTo(0, 0); });
  $("next").addEventListener("click", () => { state.page += 1; render(); window.scrollTo(0, 0); });
  choose($("g-set").value);
}());
