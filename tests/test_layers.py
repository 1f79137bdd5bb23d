"""The import structure: no module imports itself back through others (no cycles, function-level imports
included), and nothing outside the world plugin imports it. `lint-imports` (in .ci/run) checks the layers."""

from __future__ import annotations

import grimp

GRAPH = grimp.build_graph("vlalign", exclude_type_checking_imports=True)


def test_no_import_cycles():
    cycles = []
    for module in sorted(GRAPH.modules):
        for imported in GRAPH.find_modules_directly_imported_by(module):
            if imported != module and GRAPH.chain_exists(importer=imported, imported=module):
                cycles.append(GRAPH.find_shortest_chain(importer=imported, imported=module) + (imported,))
    assert cycles == []


def test_only_the_world_imports_the_world():
    outside = {m for m in GRAPH.find_downstream_modules("vlalign.world", as_package=True)
               if not (m == "vlalign.world" or m.startswith("vlalign.world."))}
    assert outside == set()
