"""The group viewer's script run by Node on a small stand-in for the page's DOM (no browser needed): it shows
each group of a rollout with its answers best first, their rewards, advantages, components and claims,
puts every text in as text, and its filters narrow the groups. Skipped where there is no `node`."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from test_grpo_report import grpo_run

from vlalign.report import write_report

NODE = shutil.which("node")

# A stand-in for the few DOM calls the viewers make: elements with attributes, children, text and listeners.
DOM = r"""
const vm = require("vm"), fs = require("fs"), path = require("path");
const [folder, filters] = [process.argv[2], JSON.parse(process.argv[3])];
class Node_ {
  constructor(tag) { this.tag = tag; this.attrs = {}; this.children = []; this.listeners = {}; this.value = "";
                     this.options = []; this.classList = { add: () => {} }; this.disabled = false; this.textContent = ""; }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  append(...xs) { for (const x of xs) this.children.push(typeof x === "string" ? { text: x } : x);
                  for (const x of xs) if (x && x.tag === "script") load(x); }
  replaceChildren(...xs) { this.children = xs; }
  addEventListener(kind, f) { (this.listeners[kind] = this.listeners[kind] || []).push(f); }
  remove(i) { this.options.splice(i, 1); }
}
const ids = {};
const byId = (id) => (ids[id] = ids[id] || new Node_("div"));
const context = { console, Object, Number, Math, JSON, Set, encodeURIComponent, window: {} };
context.document = { createElement: (t) => new Node_(t), getElementById: byId, body: new Node_("body") };
context.window.scrollTo = () => {};
vm.createContext(context);
const run = (file) => vm.runInContext(fs.readFileSync(path.join(folder, file), "utf8"), context);
function load(script) { run(script.attrs.src); script.onload && script.onload(); }
byId("g-set").value = "groups0";
byId("g-set").options = [];
byId("g-source").options = [{}];
run("data/group-sets.js"); run("viewer.js"); run("groups.js");
function text(n) { return n.text !== undefined ? n.text : (n.children || []).map(text).join(""); }
function shown() {
  return byId("groups").children.map((article) => ({
    id: article.attrs["data-id"],
    rows: article.children[2].children[1].children[1].children.map((tr) => tr.children.map(text)) }));
}
const out = { all: shown(), count: byId("group-count").textContent };
for (const [id, value] of Object.entries(filters)) { byId(id).value = value; }
for (const f of (byId("g-text").listeners.input || [])) f();
out.filtered = shown();
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(NODE is None, reason="the viewer's script runs under Node; none here")
def test_group_viewer_script_shows_and_filters_groups(tmp_path):
    report = write_report(grpo_run(tmp_path / "run")).parent
    (tmp_path / "dom.js").write_text(DOM)
    result = subprocess.run([NODE, str(tmp_path / "dom.js"), str(report), json.dumps({"g-text": "circle"})],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["count"] == "2 of 2 groups" and [g["id"] for g in out["all"]] == ["world-prompts-0", "world-prompts-1"]
    best, worst = out["all"][0]["rows"]
    assert best[:2] == ["1", "0.70"] and "rejected_claims 1" in best[2]
    assert best[3].startswith("there is a blue triangle. there is a yellow heart.")
    assert worst[:2] == ["-2", "-0.70"] and "there is a red heart." in worst[3]
    assert [g["id"] for g in out["filtered"]] == ["world-prompts-1"], "only the second group's answers say circle"
