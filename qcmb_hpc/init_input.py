"""``python -m qcmb_hpc init GEOMETRY.xyz [options] [-o INPUT.json]``: write a ManyBodyInput (v2)
from an XYZ file, ready for ``python -m qcmb_hpc INPUT.json``.

* Fragments: by connectivity (QCElemental's ``molutil.guess_connectivity``: bonded atoms belong to
  one molecule, and each molecule is a fragment), or given with ``--fragments "1-3 4-6 7,8,9"``
  (1-based atom numbers; one group per fragment). Atoms are reordered so that fragments are
  contiguous only when they are not already (a note says so: gradients follow the new order).
* Charges and multiplicities per fragment: ``--charges 0,0,1`` and ``--multiplicities 1,1,2``
  (default: neutral; singlet or doublet by electron count, as QCElemental decides).
* The model chemistry: ``--program`` (default ``pyscf``), ``--method``, ``--basis``,
  ``--keywords JSON``, ``--driver``; the expansion: ``--bsse cp,nocp,vmfc``, ``--max-nbody N``,
  ``--return-total-data``.

Errors (missing or unreadable file, not an XYZ file, fragments that do not cover the atoms, a
charge that does not fit the electrons, one fragment only, an output that exists without
``--force``) are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["main", "read_xyz", "fragments_by_connectivity", "parse_fragments", "build_molecule", "many_body_input"]

EXIT_OK, EXIT_USAGE = 0, 2
BSSE_TYPES = ("cp", "nocp", "vmfc")


class InitError(Exception):
    """A problem with what the user gave: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise InitError(message)


def many_body_input(
    molecule: Any,
    program: str = "qcmb_test",
    method: str = "hf",
    basis: Optional[str] = "sto-3g",
    driver: str = "energy",
    bsse_type: Sequence[str] = ("cp",),
    levels: Optional[Dict[Any, str]] = None,
    specifications: Optional[Dict[str, Dict[str, Any]]] = None,
    keywords: Optional[Dict[str, Any]] = None,
    protocols: Optional[Dict[str, Any]] = None,
    **mb_keywords: Any,
) -> Any:
    """A v2 ``ManyBodyInput``. With ``levels`` pass ``specifications`` (mc → {program, method, basis,
    keywords}); otherwise one "(auto)" specification from program/method/basis."""
    from qcmanybody.models.v2 import ManyBodyInput

    if specifications is None:
        specifications = {"(auto)": {"program": program, "method": method, "basis": basis, "keywords": keywords or {}}}
    specs = {
        mc: {
            "program": s["program"],
            "model": {"method": s["method"], "basis": s.get("basis")},
            "keywords": s.get("keywords", {}),
            "driver": driver,
        }
        for mc, s in specifications.items()
    }
    kw: Dict[str, Any] = {"bsse_type": list(bsse_type), **mb_keywords}
    if levels is not None:
        kw["levels"] = levels
    spec: Dict[str, Any] = {"driver": driver, "keywords": kw, "specification": specs}
    if protocols:
        spec["protocols"] = protocols
    return ManyBodyInput(molecule=molecule, specification=spec)


def read_xyz(path: str, units: str = "angstrom") -> Any:
    """Symbols and geometry of an XYZ file (atom count, comment line, ``symbol x y z`` lines) as a
    one-fragment v2 ``Molecule`` (geometry in bohr)."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise InitError(f"geometry file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InitError(f"cannot read geometry file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        natom = int(lines[0].split()[0])
    except (IndexError, ValueError):
        raise InitError(f"{path}: not an XYZ file (the first line must be the number of atoms)") from None
    body = [ln for ln in lines[2:] if ln.strip()]
    if natom < 1 or len(body) != natom:
        raise InitError(f"{path}: the first line says {natom} atoms, the file has {len(body)} atom lines")
    symbols, coords = [], []
    for i, ln in enumerate(body, start=3):
        parts = ln.split()
        try:
            if len(parts) < 4:
                raise ValueError
            coords.append([float(x) for x in parts[1:4]])
        except ValueError:
            raise InitError(f"{path}: line {i} is not 'symbol x y z': {ln.strip()!r}") from None
        symbols.append(parts[0])
    from qcelemental.models.v2 import Molecule

    factor = 1.0 if units == "bohr" else 1 / 0.52917721067
    try:
        return Molecule(symbols=symbols, geometry=[[c * factor for c in xyz] for xyz in coords], fix_com=True, fix_orientation=True)
    except Exception as exc:
        raise InitError(f"{path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def fragments_by_connectivity(molecule: Any) -> List[List[int]]:
    """Atoms grouped into molecules (connected components of QCElemental's guessed bonds), each
    sorted, ordered by their first atom."""
    from qcelemental import molutil

    n = len(molecule.symbols)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for bond in molutil.guess_connectivity(molecule.symbols, molecule.geometry):
        a, b = root(int(bond[0])), root(int(bond[1]))
        parent[max(a, b)] = min(a, b)
    groups: Dict[int, List[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def parse_fragments(text: str, natom: int) -> List[List[int]]:
    """``"1-3 4-6 7,8,9"`` → ``[[0,1,2],[3,4,5],[6,7,8]]``; every atom in exactly one fragment."""
    frags: List[List[int]] = []
    for group in text.replace(";", " ").split():
        atoms: List[int] = []
        for item in group.split(","):
            try:
                if "-" in item:
                    lo, hi = (int(x) for x in item.split("-", 1))
                    atoms.extend(range(lo, hi + 1))
                else:
                    atoms.append(int(item))
            except ValueError:
                raise InitError(f"--fragments: {item!r} is not an atom number or a range like 1-3") from None
        frags.append([a - 1 for a in atoms])
    seen = [a for f in frags for a in f]
    bad = sorted({a + 1 for a in seen if not 0 <= a < natom})
    if bad:
        raise InitError(f"--fragments: atom {bad[0]} does not exist (the molecule has {natom} atoms)")
    twice = sorted({a + 1 for a in seen if seen.count(a) > 1})
    if twice:
        raise InitError(f"--fragments: atom {twice[0]} is in more than one fragment")
    missing = sorted(set(range(1, natom + 1)) - {a + 1 for a in seen})
    if missing:
        raise InitError(f"--fragments: atom {missing[0]} is in no fragment ({len(missing)} atoms left out)")
    return frags


def _per_fragment(text: Optional[str], nfrag: int, what: str, kind: type) -> Optional[List[Any]]:
    if text is None:
        return None
    try:
        values = [kind(x) for x in text.split(",")]
    except ValueError:
        raise InitError(f"--{what}: {text!r} is not a comma-separated list of numbers") from None
    if len(values) != nfrag:
        raise InitError(f"--{what}: {len(values)} values for {nfrag} fragments")
    return values


def build_molecule(
    molecule: Any, fragments: List[List[int]], charges: Optional[List[float]] = None, multiplicities: Optional[List[int]] = None
) -> Any:
    """``molecule`` with ``fragments`` (atoms reordered if a fragment is not contiguous) and the
    fragments' charges and multiplicities (QCElemental's defaults where not given)."""
    from qcelemental.models.v2 import Molecule

    order = [a for f in fragments for a in f]
    contiguous, start = [], 0
    for f in fragments:
        contiguous.append(list(range(start, start + len(f))))
        start += len(f)
    data: Dict[str, Any] = {
        "symbols": [molecule.symbols[a] for a in order],
        "geometry": molecule.geometry[order],
        "fragments": contiguous,
        "fix_com": True,
        "fix_orientation": True,
    }
    nfrag = len(fragments)
    data["fragment_charges"] = charges if charges is not None else [0.0] * nfrag
    if multiplicities is not None:
        data["fragment_multiplicities"] = multiplicities
    try:
        return Molecule(**data)
    except Exception as exc:
        raise InitError(f"the fragments' charges and multiplicities do not fit: {_first_line(exc)}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m qcmb_hpc init", description="Write a ManyBodyInput (v2 JSON) from an XYZ file.")
    p.add_argument("geometry", help="XYZ file: atom count, a comment line, then 'symbol x y z' per atom")
    p.add_argument("-o", "--output", help="the ManyBodyInput JSON to write (default: GEOMETRY with .json)")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    p.add_argument("--units", choices=("angstrom", "bohr"), default="angstrom", help="units of the XYZ file (default angstrom)")
    p.add_argument("--program", default="pyscf", help="QCEngine program (default pyscf)")
    p.add_argument("--method", default="mp2", help="method (default mp2)")
    p.add_argument("--basis", default="cc-pvdz", help="basis set (default cc-pvdz; 'none' for methods without one)")
    p.add_argument("--keywords", default="{}", metavar="JSON", help="the program's keywords as a JSON object")
    p.add_argument("--driver", choices=("energy", "gradient", "hessian"), default="energy")
    p.add_argument("--bsse", default="cp", metavar="TYPES", help="comma-separated: cp, nocp, vmfc (default cp)")
    p.add_argument("--max-nbody", type=int, default=None, metavar="N", help="highest n-body level (default: all fragments)")
    p.add_argument("--return-total-data", action="store_true", help="return total energies (gradients, ...) not interaction ones")
    p.add_argument(
        "--fragments", default=None, metavar="GROUPS",
        help='fragments as 1-based atom groups, e.g. "1-3 4-6 7,8,9" (default: one per molecule, by connectivity)',
    )
    p.add_argument("--charges", default=None, metavar="LIST", help="charge of each fragment, e.g. 0,0,1 (default 0)")
    p.add_argument("--multiplicities", default=None, metavar="LIST", help="multiplicity of each fragment, e.g. 1,1,2")
    return p


def make_input(args: argparse.Namespace) -> Any:
    """The ManyBodyInput the arguments describe (InitError for anything wrong with them)."""
    bsse = [b.strip().lower() for b in args.bsse.split(",") if b.strip()]
    unknown = [b for b in bsse if b not in BSSE_TYPES]
    if not bsse or unknown:
        raise InitError(f"--bsse: {', '.join(unknown) or 'nothing'} given; choose from {', '.join(BSSE_TYPES)}")
    try:
        keywords = json.loads(args.keywords)
    except json.JSONDecodeError as exc:
        raise InitError(f"--keywords is not valid JSON: {exc.msg}") from None
    if not isinstance(keywords, dict):
        raise InitError("--keywords must be a JSON object, e.g. '{\"frozen_core\": true}'")
    mol = read_xyz(args.geometry, args.units)
    natom = len(mol.symbols)
    frags = parse_fragments(args.fragments, natom) if args.fragments else fragments_by_connectivity(mol)
    if len(frags) < 2:
        raise InitError(
            f"{args.geometry}: found {len(frags)} fragment; a many-body expansion needs at least 2 (give --fragments)"
        )
    charges = _per_fragment(args.charges, len(frags), "charges", float)
    mults = _per_fragment(args.multiplicities, len(frags), "multiplicities", int)
    if args.max_nbody is not None and not 1 <= args.max_nbody <= len(frags):
        raise InitError(f"--max-nbody {args.max_nbody}: must be from 1 to the {len(frags)} fragments")
    molecule = build_molecule(mol, frags, charges, mults)
    reordered = [a for f in frags for a in f] != list(range(natom))
    mb: Dict[str, Any] = {}
    if args.max_nbody is not None:
        mb["max_nbody"] = args.max_nbody
    if args.return_total_data:
        mb["return_total_data"] = True
    basis = None if args.basis.lower() == "none" else args.basis
    try:
        inp = many_body_input(
            molecule, program=args.program, method=args.method, basis=basis, driver=args.driver,
            bsse_type=bsse, keywords=keywords, **mb,
        )
    except Exception as exc:
        raise InitError(f"not a valid ManyBodyInput: {_first_line(exc)}") from None
    return inp, frags, reordered


def _describe(molecule: Any, frags: List[List[int]]) -> str:
    """``3 × H2O`` style summary of the fragments."""
    from collections import Counter

    def formula(f: List[int]) -> str:
        c = Counter(str(molecule.symbols[a]) for a in f)
        return "".join(f"{s}{c[s] if c[s] > 1 else ''}" for s in sorted(c, key=lambda s: (s != "C", s != "H", s)))

    counts = Counter(formula(f) for f in frags)
    return ", ".join(f"{n} × {f}" if n > 1 else f for f, n in counts.items())


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        output = args.output or os.path.splitext(args.geometry)[0] + ".json"
        if os.path.exists(output) and not args.force:
            raise InitError(f"{output} exists; use --force to overwrite it")
        inp, frags, reordered = make_input(args)
        text = json.dumps(json.loads(inp.serialize("json")), indent=1) + "\n"
        from .checkpoint import write_atomically

        try:
            write_atomically(output, text)
        except OSError as exc:
            raise InitError(f"cannot write {output}: {exc.strerror or exc}") from None
    except InitError as exc:
        print(f"qcmb_hpc init: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    kw = inp.specification.keywords
    spec = next(iter(inp.specification.specification.values()))
    how = "given" if args.fragments else "by connectivity"
    print(
        f"qcmb_hpc init: wrote {output}: {len(frags)} fragments {how} ({_describe(inp.molecule, frags)}); "
        f"{spec.program} {spec.model.method}/{spec.model.basis} {inp.specification.driver.value}, "
        f"{'+'.join(b.value for b in kw.bsse_type)} through {kw.max_nbody or len(frags)}-body"
    )
    if reordered:
        print("qcmb_hpc init: note: atoms were reordered so that each fragment is contiguous")
    print(f"run it with: python -m qcmb_hpc {output}")
    return EXIT_OK
