"""Safety filtering, applied to prompts before a call and to answers after it.

Three kinds of finding, each with a score in [0, 1]:

- **PII**: emails, phone numbers, payment card numbers (Luhn-checked), IBANs
  (mod-97-checked), US social security numbers, Indian Aadhaar (Verhoeff-checked)
  and PAN numbers, IPv4 addresses, and credentials that look like API keys.
- **Blocklist**: configured terms, matched case-insensitively on word boundaries.
- **Prompt injection**: weighted heuristics (instructions to ignore earlier
  instructions, to reveal the system prompt, role-play jailbreaks, ...), combined
  as independent evidence: ``1 - prod(1 - w)``.

A policy's action decides what happens: ``block`` refuses, ``redact`` replaces
each finding with ``[REDACTED:<category>]`` (an injection cannot be redacted, so it
blocks), ``flag`` only records. The decision keeps categories, counts and scores;
never the matched text, which may itself be the secret.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PII_SCORE = 0.9


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    iban = candidate.replace(" ", "").upper()
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


_VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]


def verhoeff_ok(digits: str) -> bool:
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[i % 8][int(ch)]]
    return c == 0


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


@dataclass(frozen=True)
class Detector:
    category: str
    pattern: re.Pattern[str]
    # Rejects matches that only look right (a checksum, a plausible length).
    valid: Callable[[str], bool] = lambda _m: True


def _card_ok(m: str) -> bool:
    d = _digits(m)
    return 13 <= len(d) <= 19 and luhn_ok(d)


def _phone_ok(m: str) -> bool:
    return 10 <= len(_digits(m)) <= 15


def _ipv4_ok(m: str) -> bool:
    return all(0 <= int(p) <= 255 for p in m.split("."))


def _aadhaar_ok(m: str) -> bool:
    d = _digits(m)
    return len(d) == 12 and d[0] not in "01" and verhoeff_ok(d)


# Order matters: earlier detectors claim their spans first, so a card number is
# not also reported as a phone number.
PII_DETECTORS: tuple[Detector, ...] = (
    Detector(
        "email",
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    ),
    Detector(
        "api_key",
        re.compile(
            r"\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|xox[baprs]-[A-Za-z0-9-]{10,})\b"
        ),
    ),
    Detector("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), iban_ok),
    Detector("credit_card", re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), _card_ok),
    Detector("aadhaar", re.compile(r"\b\d{4}[ -]?\d{4}[ -]?\d{4}\b"), _aadhaar_ok),
    Detector("ssn", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")),
    Detector("pan", re.compile(r"\b[A-Z]{5}\d{4}[A-Z]\b")),
    # Not part of a longer dotted run: "1.2.3.4.5" is a version, not an address.
    Detector("ipv4", re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d]|\.\d)"), _ipv4_ok),
    Detector(
        "phone",
        re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,5}(?:[ .-]?\d{2,5}){1,4}(?![\w.-]\d)"
        ),
        _phone_ok,
    ),
)

# (weight, pattern): each is evidence that the text tries to override the
# model's instructions; weights reflect how rarely the phrase is innocent.
INJECTION_HEURISTICS: tuple[tuple[float, re.Pattern[str]], ...] = tuple(
    (w, re.compile(p, re.IGNORECASE))
    for w, p in (
        (
            0.6,
            r"\b(?:ignore|disregard|forget|override)\b.{0,40}\b(?:previous|prior|above|earlier|all|any|your)\b"
            r".{0,20}\b(?:instructions?|prompts?|rules?|directions?|guidelines?)",
        ),
        (
            0.5,
            r"\b(?:reveal|show|print|repeat|output|leak)\b.{0,40}\b(?:system|hidden|initial|secret)\s+"
            r"(?:prompt|instructions?|message)",
        ),
        (0.4, r"\byou\s+are\s+now\b|\bfrom\s+now\s+on\s+you\s+(?:are|will)\b"),
        (0.4, r"\b(?:DAN|do\s+anything\s+now|developer\s+mode|jailbreak)\b"),
        (0.3, r"\bpretend\s+(?:to\s+be|you\s+are)\b|\bact\s+as\s+(?:if|an?\s+unrestricted)\b"),
        (0.3, r"\bwithout\s+(?:any\s+)?(?:restrictions|filters|censorship|limitations)\b"),
        (0.3, r"</?\s*(?:system|im_start|im_end)\s*>|<\|im_start\|>|\[/?INST\]"),
        (0.2, r"\bnew\s+instructions?\s*:"),
    )
)


@dataclass(frozen=True)
class Finding:
    category: str
    score: float
    start: int = -1
    end: int = -1


@dataclass(frozen=True)
class Policy:
    action: str  # block | redact | flag
    blocklist: tuple[str, ...] = ()
    injection_threshold: float = 0.5


@dataclass
class Verdict:
    """The outcome of checking a set of texts against a policy."""

    decision: str  # allowed | flagged | redacted | blocked
    reason: str
    score: float
    findings: list[dict[str, object]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # the texts after redaction

    @property
    def blocked(self) -> bool:
        return self.decision == "blocked"

    @property
    def categories(self) -> list[str]:
        return [str(f["category"]) for f in self.findings]


def pii_findings(text: str) -> list[Finding]:
    taken: list[tuple[int, int]] = []
    found: list[Finding] = []
    for det in PII_DETECTORS:
        for m in det.pattern.finditer(text):
            if any(m.start() < e and s < m.end() for s, e in taken) or not det.valid(m.group()):
                continue
            taken.append((m.start(), m.end()))
            found.append(Finding(det.category, PII_SCORE, m.start(), m.end()))
    return found


def blocklist_findings(text: str, terms: Sequence[str]) -> list[Finding]:
    found: list[Finding] = []
    for term in terms:
        if not term.strip():
            continue
        pattern = re.compile(rf"(?<!\w){re.escape(term.strip())}(?!\w)", re.IGNORECASE)
        found.extend(Finding("blocklist", 1.0, m.start(), m.end()) for m in pattern.finditer(text))
    return found


def injection_score(text: str) -> float:
    remaining = 1.0
    for weight, pattern in INJECTION_HEURISTICS:
        if pattern.search(text):
            remaining *= 1 - weight
    return round(1 - remaining, 4)


def redact(text: str, findings: Sequence[Finding]) -> str:
    spans = sorted((f for f in findings if f.start >= 0), key=lambda f: f.start)
    out, pos = [], 0
    for f in spans:
        if f.start < pos:  # overlapping a span already replaced
            continue
        out.append(text[pos : f.start])
        out.append(f"[REDACTED:{f.category}]")
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


def check(
    texts: Sequence[str], policy: Policy, *, injection_in: Sequence[bool] | None = None
) -> Verdict:
    """Check texts (e.g. the messages of one request) and apply the policy.

    ``injection_in[i]`` says whether text ``i`` is scanned for prompt injection:
    system prompts legitimately say "you are now ...", user text should not.
    """
    scan_injection = list(injection_in) if injection_in is not None else [True] * len(texts)
    per_text: list[list[Finding]] = []
    counts: dict[str, list[float]] = {}
    top_injection = 0.0
    for text, scan in zip(texts, scan_injection, strict=True):
        spans = pii_findings(text) + blocklist_findings(text, policy.blocklist)
        per_text.append(spans)
        for f in spans:
            counts.setdefault(f.category, []).append(f.score)
        if scan:
            top_injection = max(top_injection, injection_score(text))
    if top_injection >= policy.injection_threshold and top_injection > 0:
        counts["prompt_injection"] = [top_injection]

    findings = [
        {"category": cat, "count": len(scores), "score": round(max(scores), 4)}
        for cat, scores in sorted(counts.items())
    ]
    score = max((float(str(f["score"])) for f in findings), default=round(top_injection, 4))
    if not findings:
        return Verdict("allowed", "no findings", score, [], list(texts))

    summary = ", ".join(f"{f['category']} x{f['count']}" for f in findings)
    if policy.action == "flag":
        return Verdict("flagged", f"flagged: {summary}", score, findings, list(texts))
    if policy.action == "redact" and "prompt_injection" not in counts:
        redacted = [redact(t, spans) for t, spans in zip(texts, per_text, strict=True)]
        return Verdict("redacted", f"redacted: {summary}", score, findings, redacted)
    why = (
        "prompt injection cannot be redacted"
        if policy.action == "redact"
        else "policy blocks findings"
    )
    return Verdict("blocked", f"blocked ({why}): {summary}", score, findings, list(texts))


def merge(verdicts: Sequence[Verdict]) -> Verdict:
    """One decision for an answer checked in pieces (a filtered stream)."""
    counts: dict[str, tuple[int, float]] = {}
    for v in verdicts:
        for f in v.findings:
            n, s = counts.get(str(f["category"]), (0, 0.0))
            counts[str(f["category"])] = (n + int(str(f["count"])), max(s, float(str(f["score"]))))
    findings = [{"category": c, "count": n, "score": s} for c, (n, s) in sorted(counts.items())]
    score = max((v.score for v in verdicts), default=0.0)
    rank = ["allowed", "flagged", "redacted", "blocked"]
    decision = max((v.decision for v in verdicts), key=rank.index, default="allowed")
    if not findings:
        return Verdict("allowed", "no findings", score)
    summary = ", ".join(f"{f['category']} x{f['count']}" for f in findings)
    return Verdict(decision, f"{decision}: {summary}", score, findings)
