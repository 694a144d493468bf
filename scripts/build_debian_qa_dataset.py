"""Build the shipped extractive question-answering data set from Debian package descriptions.

Each row is one question about one Debian 12 (bookworm, main) package description, in the flat
SQuAD v2 layout. The context is the package's English long description, unchanged; the
questions come from fixed rules that match patterns in the description's own sentences
("X is a ...", "This package contains ...", "X is written in C", "X (Foo Bar Baz)", "X is a fork
of ...", "X was developed by ...", "X is released under ..."), and every answer is a span of
the context. About 30% of the questions are unanswerable: a rule's question asked of a
description that gives no answer to it. Run on a Debian machine after
`apt-get -o Acquire::Languages=en,de,fr update`:

    python scripts/build_debian_qa_dataset.py --out src/lmforge/resources/debian_qa

The filters, the counts of each rule and the statistics of the result are printed; the README
of the data set records them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from build_debian_packages_dataset import read_bookworm_lists
from build_debian_summaries_dataset import (
    binary_preference,
    describe,
    description_paragraphs,
    release_info,
)

SPLITS = ("train", "validation", "test")
ANSWERABLE = ("definition", "contents", "language", "acronym", "fork", "developer", "license")
UNANSWERABLE = ("no-language", "no-acronym", "no-fork", "no-developer", "no-license")
RULE_ORDER = ANSWERABLE + UNANSWERABLE
# Share of each split's rows a rule may fill at most. The rare rules (language, fork,
# developer, license) match fewer descriptions than their share, so all their matches are
# kept; definition, contents and acronym questions fill what is left up to the split's size.
SHARES = {
    "definition": 0.22,
    "contents": 0.17,
    "acronym": 0.16,
    "language": 0.13,
    "fork": 0.04,
    "developer": 0.03,
    "license": 0.01,
    "no-language": 0.14,
    "no-acronym": 0.06,
    "no-fork": 0.05,
    "no-developer": 0.04,
    "no-license": 0.03,
}

# fmt: off
# Programming languages an answer of the "language" rule may name (case-sensitive).
LANGUAGES = (
    "C", "C++", "C#", "Objective-C", "ANSI C", "ISO C", "ANSI C++", "ISO C++", "C99", "C11",
    "C++11", "C++14", "C++17", "Python", "Python 3", "Perl", "Java", "Rust", "Go", "Ruby",
    "OCaml", "Haskell", "JavaScript", "TypeScript", "CoffeeScript", "Lua", "Tcl", "Tcl/Tk", "PHP",
    "Scheme", "Guile", "Racket", "Common Lisp", "ANSI Common Lisp", "Emacs Lisp", "Lisp",
    "Clojure", "Fortran", "Fortran 77", "Fortran 90", "Ada", "Erlang", "Elixir", "Scala",
    "Kotlin", "Groovy", "Vala", "Pascal", "Free Pascal", "Object Pascal", "Smalltalk", "Prolog",
    "Julia", "Nim", "Crystal", "Dart", "Swift", "Zig", "Standard ML", "F#", "Forth", "Eiffel",
    "Pike", "Mercury", "Cython", "Bash", "POSIX shell", "shell", "awk", "Yorick", "GAP", "R",
    "Raku", "Assembly", "assembly", "assembler", "VBA", "Visual Basic", "BASIC", "Pure Data",
)
# A context with any of these words (case-insensitive, whole words) may hint at a language, so
# the unanswerable "language" question is not asked of it.
LANGUAGE_HINTS = (
    r"languages?", r"scripts?", r"scripting", r"compiled", r"compilers?", r"interpreters?",
    r"interpreted", r"bindings?", r"source code", r"node\.?js", r"js", r"jvm", r"\.net", r"mono",
    r"perl\w*", r"python\w*", r"ruby", r"php\w*", r"java\w*", r"haskell", r"ocaml", r"lisp",
    r"scheme", r"guile", r"lua", r"tcl", r"rust", r"golang", r"emacs", r"elisp", r"qt\d?",
    r"gtk\S*", r"libc", r"glibc", r"stl", r"boost", r"cpan", r"pypi", r"gems?", r"npm",
    r"crates?", r"cabal", r"hackage", r"cran", r"elpa", r"opam", r"basic", r"sql", r"awk",
    r"vhdl", r"verilog", r"asm", r"c/c\+\+", r"pure data", r"pd", r"max/msp", r"supercollider",
)
LICENCE_HINTS = (
    r"licen[cs]\w*", r"gpl\w*", r"lgpl\w*", r"agpl\w*", r"bsd", r"mit", r"apache", r"mpl",
    r"isc", r"artistic", r"expat", r"zlib", r"public domain", r"copyright\w*", r"copyleft",
    r"free software", r"open[- ]source", r"opensource", r"proprietary", r"dfsg", r"freeware",
    r"shareware", r"creative commons", r"cc0", r"cc-by\S*", r"ofl", r"non-free", r"gnu",
    r"libre", r"freely", r"commercial",
)
# Words that name or point at a maker.
DEVELOPER_HINTS = (
    r"by", r"author\w*", r"develop\w*", r"written", r"wrote", r"writer", r"created", r"creator",
    r"maintain\w*", r"designed", r"team", r"projects?", r"community", r"company", r"companies",
    r"corporation", r"foundation", r"university", r"institute", r"inc", r"ltd", r"gmbh",
    r"labs?", r"laboratory", r"group", r"consortium", r"contributors?", r"volunteers?",
    r"people", r"originally", r"upstream", r"fork\w*", r"port", r"ported", r"based", r"part",
    r"gnome", r"kde", r"gnu", r"apache", r"mozilla", r"google", r"microsoft", r"apple", r"ibm",
    r"intel", r"red hat", r"canonical", r"ubuntu", r"debian", r"xfce", r"lxqt", r"lxde",
    r"deepin", r"mate", r"freedesktop", r"x\.org", r"openbsd", r"freebsd", r"netbsd", r"sun",
    r"oracle", r"nvidia", r"amd", r"adobe", r"hp", r"cisco", r"cern", r"nasa", r"horde",
    r"kodi", r"tryton", r"globus", r"eclipse", r"jboss", r"spring", r"sourceforge", r"github",
    r"gitlab", r"vendor", r"manufacturer", r"https?", r"www", r"\S+\.(?:org|com|net)\S*",
)
# Words that say what a program derives from: the unanswerable "fork" question is not asked of
# a context holding any of them.
FORK_HINTS = (
    r"fork\w*", r"based", r"derived?", r"derivative", r"successor", r"predecessor", r"clones?",
    r"port", r"ported", r"originally", r"original", r"continuation", r"rewrite", r"rewritten",
    r"replacement", r"replaces?", r"inspired", r"variant", r"modified", r"patched", r"evolution",
    r"descendant", r"spin-off", r"offshoot", r"version of", r"reimplementation",
    r"re-implementation", r"compatible", r"emulat\w*", r"continued", r"continues", r"taken",
    r"borrowed", r"copy", r"copied", r"adapted", r"adaptation", r"implementation of",
    r"influenced",
)
# Sections of programs and libraries: asking what language one is written in, who developed it
# or under which licence it is released is natural there. Sections named after a language
# (python, perl, ...) are left out: for them the answer is the section.
SOFTWARE_SECTIONS = {
    "admin", "comm", "database", "devel", "editors", "education", "electronics", "embedded",
    "games", "gnome", "graphics", "hamradio", "httpd", "kde", "kernel", "libs", "mail", "math",
    "misc", "net", "news", "otherosfs", "science", "shells", "sound", "text", "utils", "vcs",
    "video", "web", "x11", "xfce",
}
# Sentence-initial words that never start a name.
NOT_NAMES = {
    "A", "An", "All", "Also", "Another", "Any", "As", "At", "Both", "Each", "Every", "For",
    "Here", "His", "However", "If", "In", "It", "Its", "Many", "Most", "No", "Note", "On", "One",
    "Our", "Package", "Please", "Some", "Such", "That", "Their", "There", "These", "They", "This",
    "Those", "To", "Version", "When", "While", "With", "You", "Your", "Unlike", "Upstream",
}
ABBREVIATIONS = {
    "e.g", "i.e", "etc", "vs", "cf", "approx", "incl", "Dr", "Mr", "Mrs", "Ms", "Prof", "St",
    "Inc", "Ltd", "Co", "Jr", "Sr", "No", "Fig", "al", "resp", "esp", "ca", "eg", "ie", "viz",
    "a.k.a", "aka", "ver", "Vol", "vol", "Corp", "Bros",
}
# Answers may not end with one of these words.
DANGLING = {
    "a", "an", "the", "of", "for", "to", "and", "or", "with", "in", "on", "by", "from", "as",
    "at", "into", "that", "which", "its", "their", "your", "this", "these", "like", "such",
    "e.g", "i.e", "etc", "both", "either", "not", "very", "is", "are", "be", "than", "via",
    "specifically", "especially", "particularly", "namely", "mainly", "mostly", "including",
}
# Words an acronym's expansion may skip ("Filesystem in USErspace").
SMALL_WORDS = {"of", "the", "and", "for", "in", "to", "a", "an", "on", "with", "by", "from", "at"}
# fmt: on


def whole_words(words: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"(?<![\w-])(?:" + "|".join(words) + r")(?![\w-])", re.IGNORECASE)


LANGUAGE_HINT = whole_words(LANGUAGE_HINTS)
LICENCE_HINT = whole_words(LICENCE_HINTS)
DEVELOPER_HINT = whole_words(DEVELOPER_HINTS)
FORK_HINT = whole_words(FORK_HINTS)
LANGUAGE = "|".join(re.escape(lang) for lang in sorted(LANGUAGES, key=len, reverse=True))
ONE_LANGUAGE = rf"(?:{LANGUAGE})(?![\w+#/-])"
# One language, then more joined by ",", "/" or "and" ("C and C++", "C/C++").
LANGUAGE_LIST = rf"{ONE_LANGUAGE}(?:(?:, | and |, and |/){ONE_LANGUAGE})*"
LANGUAGE_ANYWHERE = re.compile(rf"(?<![\w+#.-]){ONE_LANGUAGE}")
# Language names in package names ("python3-foo", "libfoo-perl") or helper packages.
LANGUAGE_PACKAGE = re.compile(
    r"^(python|pypy|ruby|node|golang|r-cran|r-bioc|r-other|libghc|haskell|elpa|php|perl|lua|"
    r"tcl|ocaml|cl-|librust|rust|julia|octave|gir1|mono|libjs|dh-|pd-)|(-perl|-java|-ocaml|-dev|"
    r"-doc|-data|-common|-cil|-jni|-el|-tcl|-lua|-guile|-php|-ruby|-go)$"
)
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
# A word a name may consist of: a letter or digit first, then letters, digits, + . : - _ / ' #.
NAME_WORD = re.compile(r"\w(?:[\w+.:/'#-]*[\w+#])?")
ACRONYM = re.compile(r"[A-Z]{2,8}")


def sentences(context: str) -> list[tuple[int, int, str]]:
    """Split a context into sentences: (line number, offset, text without the final stop).

    Each line (paragraph or list item) is split after ".", "!" or "?" and white space, unless
    the word before the stop is a known abbreviation or an initial.
    """
    found = []
    offset = 0
    for number, line in enumerate(context.split("\n")):
        start = 0
        for match in SENTENCE_BREAK.finditer(line):
            before = line[start : match.start()]
            words = before.rsplit(" ", 2)
            last = words[-1].rstrip(".!?")
            # An initial: one capital after a capitalised word ("Steven G. Johnson"), not a
            # one-letter word ending a sentence ("... in R. Features ...").
            initial = len(words) > 1 and re.fullmatch(r"[A-Z]", last) and words[-2][:1].isupper()
            if last in ABBREVIATIONS or initial:
                continue
            found.append((number, offset + start, before))
            start = match.end()
        found.append((number, offset + start, line[start:]))
        offset += len(line) + 1
    result = []
    for number, start, text in found:
        text = text.rstrip()
        while text and text[-1] in ".!?":
            text = text[:-1]
        if text.strip():
            result.append((number, start, text))
    return result


def name_variants(package: str) -> set[str]:
    """Lower-case spellings under which a description may name its own package."""
    variants = {package}
    name = package
    for prefix in (
        "python3-",
        "python-",
        "ruby-",
        "node-",
        "golang-github-",
        "golang-",
        "r-cran-",
        "r-bioc-",
        "elpa-",
        "php-",
        "libghc-",
        "fonts-",
        "gir1.2-",
        "lib",
    ):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            variants.add(name)
    for suffix in ("-perl", "-java", "-ocaml-dev", "-dev", "-utils", "-tools", "-bin", "-ocaml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            variants.add(name)
    variants.add(re.sub(r"[\d.]+$", "", name))
    variants |= {v.replace("-", "::") for v in set(variants)}
    variants |= {"lib" + v for v in set(variants) if not v.startswith("lib")}
    return {v for v in variants if len(v) >= 2}


class Names:
    """Decides which sentence subjects are names a question may ask about."""

    def __init__(self, contexts: list[str]) -> None:
        # A word written in lower case inside sentences of at least 15 descriptions is ordinary
        # English (or generic jargon) and no name: "Software is a ..." asks about nothing. A
        # word found inside sentences of 60 descriptions in any case ("API", "Python", "Qt")
        # is too widely shared to make a question about one description.
        lower: Counter[str] = Counter()
        shared: Counter[str] = Counter()
        for context in contexts:
            lower.update(set(re.findall(r"(?<=[a-z,] )([a-z][a-z-]+)\b", context)))
            shared.update({w.lower() for w in re.findall(r"(?<=[a-z,] )(\w[\w+.-]*\w)", context)})
        self.common = {word for word, n in lower.items() if n >= 15}
        self.common |= {word for word, n in shared.items() if n >= 60}

    def is_name(self, subject: str, package: str) -> bool:
        if subject.lower() in name_variants(package):
            return True
        core = subject[4:] if subject.startswith("The ") else subject
        tokens = core.split()
        if not 1 <= len(tokens) <= 4 or tokens[0] in NOT_NAMES:
            return False
        if not all(NAME_WORD.fullmatch(t) and t[0].isalnum() for t in tokens):
            return False
        if subject.startswith("The ") or len(tokens) > 1:
            # Every word capitalised (or a number), and not all of them ordinary words.
            if not all(t[0].isupper() or t[0].isdigit() for t in tokens):
                return False
            return not all(t.lower() in self.common for t in tokens)
        return tokens[0].lower() not in self.common and not tokens[0].isdigit()


def as_question_subject(subject: str) -> str:
    return "the " + subject[4:] if subject.startswith("The ") else subject


class Description:
    """One context with what the rules need to know about it."""

    def __init__(self, row: dict[str, str], names: Names) -> None:
        self.package = row["package"]
        self.section = row["section"]
        self.context = row["description"]
        self.names = names
        self.sentences = sentences(self.context)
        # The name the first sentence is about ("Knot DNS is ...", "cthumb allows ..."), if any.
        self.subject: str | None = None
        match = re.match(
            r"(.{1,60}?)(?: \([^()]{1,80}\))?,? (?:is|are|was|provides|allows|lets|can|offers"
            r"|implements|supports|contains|generates|helps|enables|makes|creates|converts)\b",
            self.sentences[0][2],
        )
        if match and names.is_name(match.group(1), self.package):
            self.subject = match.group(1)

    def is_name(self, subject: str) -> bool:
        return self.names.is_name(subject, self.package)

    def resolve(self, index: int, subject: str) -> str | None:
        """The question's name for a sentence subject; "It" only right after a sentence
        about the description's main subject, in the same paragraph."""
        if subject == "It" and self.subject and index > 0:
            number, _, previous = self.sentences[index - 1]
            if number == self.sentences[index][0] and previous.startswith(self.subject + " "):
                return as_question_subject(self.subject)
            return None
        return as_question_subject(subject) if self.is_name(subject) else None

    def row(self, rule: str, question: str, start: int, text: str, key: str) -> dict:
        assert self.context[start:].startswith(text), (self.context, start, text)
        return {"rule": rule, "question": question, "text": text, "start": start, "key": key}


def balanced(text: str) -> bool:
    return text.count("(") == text.count(")") and text.count('"') % 2 == 0


def clean_span(text: str, min_words: int, max_words: int) -> str | None:
    """Trim an answer span; None unless it is a balanced phrase of min..max words that does
    not end on a function word."""
    text = text.strip()
    if text.endswith(","):
        # "for images, videos, ...": the sentence trails off in a list.
        return None
    text = text.rstrip(";:")
    words = text.split()
    if not min_words <= len(words) <= max_words or not balanced(text):
        return None
    if words[-1].lower().rstrip(".") in DANGLING or text.endswith(("'s", "-")):
        return None
    return text


def cut(text: str, stop: re.Pattern[str]) -> tuple[str, re.Match[str] | None]:
    """Text up to the first match of stop outside parentheses, and that match."""
    for match in stop.finditer(text):
        head = text[: match.start()]
        if head.count("(") == head.count(")"):
            return head, match
    return text, None


# Where a definition's noun phrase stops: a relative clause, a new clause after a comma, an
# adverb or participle after a comma, a dash, colon or semicolon.
DEFINITION_STOP = re.compile(
    r",? (?:which|that|who|whose|where|while|whereas|because|since)\b"
    r"|, (?:and|but|so|or|as|with|for|using|allowing|providing|offering|making|giving|enabling"
    r"|including|such as|e\.g\.|i\.e\.|mainly|primarily|originally|mostly|currently|now|also"
    r"|based|built|designed|developed|written|implemented|released|licensed|distributed"
    r"|created|intended|aimed|meant|capable|able|similar|inspired|derived|available"
    r"|compatible|focused|like|in|on|to|from|by|it|its|is|was|it's|if|when|thus|hence"
    r"|\w+ing|you|we|they|this|these|there|he|she|one)\b"
    r"| and (?:is|was|has|can|provides|allows|supports|it|also|aims|offers|comes|features"
    r"|includes|uses|runs|works|lets|gives|makes)\b"
    r"|; |: | - | -- | \u2013 | \u2014 "
)
RELATIVE = re.compile(r" (?:which|that|who)")
# Where a restrictive relative clause kept in a definition stops: the definition stops less
# its relative clauses.
CLAUSE_STOP = re.compile(
    DEFINITION_STOP.pattern.replace(",? (?:which|that|who|", ", (?:which|that|who|")
)


def definition_cut(text: str, stop: re.Pattern[str]) -> tuple[str, re.Match[str] | None]:
    """cut() for definitions, passing over two kinds of list separator: ", and" after an
    earlier comma ("no fancy graphics, no window decorations, and no ..."), and ", <word>ing"
    after a word with the same ending ("for generating, validating and ...")."""
    for match in stop.finditer(text):
        head = text[: match.start()]
        if head.count("(") != head.count(")"):
            continue
        found = match.group(0)
        last = head.rsplit(" ", 1)[-1]
        if found == ", and" and "," in head:
            continue
        if re.fullmatch(r", \w+ing", found) and last.endswith("ing"):
            continue
        return head, match
    return text, None


def definition_questions(d: Description) -> list[dict]:
    """ "<Name> is a/an/the <noun phrase>." -> "What is <Name>?"

    The answer is the noun phrase after "is", cut before a non-restrictive clause. A
    restrictive relative clause ("a program that captures data ...") stays in, up to the next
    comma, if the whole is at most 25 words. A longer one is cut off only where the head holds
    no preposition and has four words or more ("a secure password manager"); otherwise the
    clause may belong to the preposition's object ("a module for systems which ...") or the
    head says too little ("a program"), and the sentence gives no question.
    """
    out = []
    for index, (_, offset, sentence) in enumerate(d.sentences):
        match = re.match(r"(.{1,60}?)(?: \([^()]{1,80}\))? is (?=(?:a|an|the) )", sentence)
        if not match or match.group(1) == "It" or sentence.endswith(":"):
            continue
        subject = d.resolve(index, match.group(1))
        if not subject:
            continue
        rest = sentence[match.end() :]
        head, stop = definition_cut(rest, DEFINITION_STOP)
        if stop and RELATIVE.fullmatch(stop.group(0)):
            if re.search(r"\b(?:sure|so|such|ensure|ensures|means|note|say|says|fact)$", head):
                continue  # "make sure that ...": a content clause, not a relative one.
            tail, _ = definition_cut(rest[stop.end() :], CLAUSE_STOP)
            whole = clean_span(rest[: stop.end()] + tail, 3, 25)
            if whole:
                head = whole
            elif len(head.split()) <= 3 or PREPOSITION.search(head):
                continue
        elif len(head.split()) <= 3 and re.fullmatch(r"(?:a|an|the) \S+(?: \S+)?", head):
            continue
        span = clean_span(head, 3, 25)
        if span and "following" not in span:
            question = f"What is {subject}?"
            out.append(d.row("definition", question, offset + match.end(), span, sentence))
    return out


PREPOSITION = re.compile(r" (?:of|for|to|with|in|on|from|by|at|into|over|about|between) ")


CONTENTS_STOP = re.compile(
    r", (?:which|so|but|allowing|making|enabling|providing|and|as it|e\.g\.|i\.e\.)\b"
    r"|; | - | -- | \u2013 | \u2014 "
)


def contents_questions(d: Description) -> list[dict]:
    """ "This package contains/provides/includes <Y>." -> "What does the <package> package
    contain/provide/include?", if the description has exactly one such sentence."""
    found = []
    for _, offset, sentence in d.sentences:
        match = re.match(
            rf"(?:This|The {re.escape(d.package)}) package (also )?(contains|provides|includes) ",
            sentence,
        )
        if match:
            found.append((offset, sentence, match))
    # Two such sentences make the question ambiguous; "also" marks a partial answer.
    if len(found) != 1 or found[0][2].group(1):
        return []
    offset, sentence, match = found[0]
    rest = sentence[match.end() :]
    if re.match(r"(?:the following|following|these|several|some|various)\b", rest):
        return []
    if rest.endswith(":"):
        return []
    head, stop = cut(rest, CONTENTS_STOP)
    if stop and stop.group(0) == ", and" and "," in head:
        # ", and" after an earlier comma ends a list, not the phrase.
        head = cut(rest, re.compile(CONTENTS_STOP.pattern.replace("|and|", "|")))[0]
    span = clean_span(head, 1, 30)
    if not span or re.match(r"(?:for|to|with|in|on|that|by|from)\b", span):
        return []
    verb = {"contains": "contain", "provides": "provide", "includes": "include"}[match.group(2)]
    question = f"What does the {d.package} package {verb}?"
    return [d.row("contents", question, offset + match.end(), span, sentence)]


# The subject, an optional parenthesised expansion, "is"/"was", then optionally a plain noun
# phrase: an article and up to ten words with no comma, clause word or preposition that could
# make what follows describe some other thing ("a tool written in C", not "a front end to a
# library written in C").
NP_WORD = (
    r"(?!(?:of|to|for|from|on|by|with|around|between|that|which|who|in|into|over|under|using"
    r"|via|like|than|as|at|and|or|but|based|built|is|was|partly|partially|mostly|mainly"
    r"|largely|also|originally|initially|currently|now|formerly|previously|once)\b)[^\s,;:()]+"
)
HEAD = (
    r"(?P<subject>.{1,60}?)(?: \([^()]{1,80}\))? (?:is|was) "
    rf"(?:(?:a|an|the) (?:{NP_WORD} ){{0,10}})?(?:, )?"
    r"(?:(?P<adverb>originally|initially|mostly|entirely|completely|fully|purely|primarily"
    r"|mainly|largely|exclusively) )?"
)
LANGUAGE_RULE = re.compile(
    HEAD + r"(?P<verb>written|implemented|coded) (?:(?:entirely|completely|purely|mostly"
    r"|mainly|fully) )?in (?:the )?(?:pure |plain |portable |standard |modern )?"
    rf"(?P<answer>{LANGUAGE_LIST})"
)
CAP = r"[A-Z0-9][\w'\u2019&.-]*[\w.]|[A-Z]"
AGENT = (
    rf"(?:the )?(?:{CAP})(?:(?: |, | and |, and | of the | of | de | van | von | & )(?:{CAP}))*"
    r"(?: (?:project|team|community|developers|group|authors))?"
)
DEVELOPER_RULE = re.compile(
    HEAD + r"(?P<verb>developed|written|created|designed|maintained) by "
    rf"(?P<answer>{AGENT})(?=$|[,;(]| (?:and|with|at|in|for|from|since|as|to|under|who"
    r"|which|that|on|using|while|during|through|between|it|is|was)\b)"
)
DEVELOPER_VERBS = {
    "developed": "developed",
    "written": "wrote",
    "created": "created",
    "designed": "designed",
    "maintained": "maintains",
}
LICENCE_RULE = re.compile(
    HEAD + r"(?:free software,? |open[- ]source,? )?(?P<verb>released|licensed|licenced"
    r"|dual-licensed|distributed|available) under (?:the terms of )?(?:the )?(?P<answer>.+)"
)
LICENCE_END = re.compile(
    r",|;| \(| so | to | which | while | for | as | with | and (?!the )(?=[a-z])| but | since "
)
LICENCE_NAME = re.compile(
    r"GPL|LGPL|AGPL|BSD|MIT|Apache|MPL|ISC|Artistic|Boost|Creative Commons|CC0|Open Font|OFL"
    r"|[Pp]ublic [Dd]omain|zlib|Eclipse|EPL|CDDL|Expat|WTFPL|Unlicense|General Public"
    r"|[A-Z]\w+ (?:Public )?Licen[cs]e"
)
FORK_RULE = re.compile(
    r"(?P<subject>.{1,60}?)(?: \([^()]{1,80}\))? (?:is|was) (?:a|an) (?:[\w-]+ )?fork of "
    r"(?P<answer>.+)"
)
FORK_END = re.compile(
    r",|;|: | \(| (?:which|that|who|with|by|to|and|at|for|in|from|as|since|but|under|born"
    r"|now)(?=[\s,.;:]|$)"
    # A participle or adverb after a noun starts a modifier ("the dwipe command used in ...",
    # "SeExpr mainly used ..."); after an article it is an adjective ("the unmaintained afl").
    r"|(?<!\bthe)(?<!\ban)(?<!\ba)(?<!\bits) [a-z][\w-]*(?:ed|ing|ly)(?=[\s,.;:]|$)"
)


def predicate_questions(d: Description) -> list[dict]:
    """Language, developer, licence and forebear of a named subject, one sentence each.

    "<Name> is written in <Language>" or "<Name> is a <plain noun phrase> written in
    <Language>" -> "What programming language is <Name> written in?"; likewise "developed by
    <Agent>" -> "Who developed <Name>?", "released under <Licence>" -> "Under which license
    is <Name> released?" and "<Name> is a fork of <X>" -> "What is <Name> a fork of?".
    """
    out = []
    for index, (_, offset, sentence) in enumerate(d.sentences):
        match = LANGUAGE_RULE.match(sentence)
        subject = match and d.resolve(index, match.group("subject"))
        # "mostly/mainly written in" gives only part of the answer.
        if (
            match
            and subject
            and match.group("adverb")
            in (None, "originally", "entirely", "completely", "fully", "purely")
        ):
            question = f"What programming language is {subject} {match.group('verb')} in?"
            start = offset + match.start("answer")
            out.append(d.row("language", question, start, match.group("answer"), sentence))
            continue
        match = DEVELOPER_RULE.match(sentence)
        subject = match and d.resolve(index, match.group("subject"))
        if match and subject:
            agent, adverb = match.group("answer"), match.group("adverb")
            # A name cut at an initial ("Steven G") or a hedged "mostly written by" is skipped.
            if re.search(r"(?:^| )[A-Z]$", agent) or adverb not in (None, "originally"):
                continue
            verb = DEVELOPER_VERBS[match.group("verb")]
            question = f"Who {adverb + ' ' if adverb else ''}{verb} {subject}?"
            start = offset + match.start("answer")
            out.append(d.row("developer", question, start, agent, sentence))
            continue
        match = LICENCE_RULE.match(sentence)
        subject = match and d.resolve(index, match.group("subject"))
        if match and subject:
            answer = LICENCE_END.split(match.group("answer"))[0].strip()
            if LICENCE_NAME.search(answer) and len(answer.split()) <= 12 and balanced(answer):
                verb = match.group("verb")
                verb = "released" if "licen" in verb else verb
                question = f"Under which license is {subject} {verb}?"
                start = offset + match.start("answer")
                out.append(d.row("license", question, start, answer, sentence))
            continue
        match = FORK_RULE.match(sentence)
        subject = match and d.resolve(index, match.group("subject"))
        if match and subject:
            answer = clean_span(FORK_END.split(match.group("answer"))[0], 1, 8)
            if answer:
                question = f"What is {subject} a fork of?"
                start = offset + match.start("answer")
                out.append(d.row("fork", question, start, answer, sentence))
    return out


def acronym_letters(word: str) -> list[list[str]]:
    """The letter sequences one word of an expansion may contribute to an acronym: its first
    letter, then optionally capitals from inside it ("USErspace" gives u, us, use) unless the
    word is all capitals (an acronym itself gives its first letter only)."""
    inner = [c.lower() for c in word[1:] if c.isupper()] if not word.isupper() else []
    options = [[word[0].lower()]]
    for n in range(1, len(inner) + 1):
        options.append([word[0].lower(), *inner[:n]])
    return options


def expands(acronym: str, phrase: str) -> bool:
    """Whether phrase spells out acronym: every word gives its first letter (small words like
    "of" may give none), words may add inner capitals, and all letters are used in order."""
    words = [w for w in re.split(r"[ /-]+", phrase) if w]
    if not words or not all(re.fullmatch(r"[A-Za-z][A-Za-z']*", w) for w in words):
        return False
    letters = acronym.lower()

    def match(i: int, j: int) -> bool:
        if j == len(words):
            return i == len(letters)
        if words[j].lower() in SMALL_WORDS and j > 0 and match(i, j + 1):
            return True
        for option in acronym_letters(words[j]):
            if letters[i : i + len(option)] == "".join(option) and match(i + len(option), j + 1):
                return True
        return False

    return match(0, 0)


def acronym_questions(d: Description) -> list[dict]:
    """ "<ACRONYM> (<expansion>)" or "<expansion> (<ACRONYM>)" -> "What does <ACRONYM> stand
    for?", when the words' initials spell the acronym. A leading "the" stays out of the
    answer; the shortest run of words before the parenthesis that spells it is the answer."""
    out, seen = [], set()
    for match in re.finditer(
        r"(?<![\w-])([A-Z]{2,8})s? \((?:the |The )?([^()]{3,100})\)", d.context
    ):
        acronym, phrase = match.group(1), match.group(2)
        if acronym not in seen and expands(acronym, phrase):
            seen.add(acronym)
            question = f"What does {acronym} stand for?"
            out.append(d.row("acronym", question, match.start(2), phrase, question + phrase))
    for match in re.finditer(r"\(([A-Z]{2,8})s?\)", d.context):
        acronym = match.group(1)
        before = d.context[: match.start()].rstrip(" ")
        if acronym in seen or before != d.context[: match.start() - 1]:
            continue
        words = list(re.finditer(r"[A-Za-z][\w'/-]*", before.rsplit("\n", 1)[-1]))
        line_start = len(before) - len(before.rsplit("\n", 1)[-1])
        for k in range(1, min(len(words), len(acronym) + 3) + 1):
            first = words[-k]
            start = line_start + first.start()
            phrase = before[start:]
            if not re.fullmatch(r"[A-Za-z][\w'/-]*(?: [A-Za-z][\w'/-]*)*", phrase):
                break
            if first.group(0).lower() in SMALL_WORDS:
                continue
            if expands(acronym, phrase):
                seen.add(acronym)
                question = f"What does {acronym} stand for?"
                out.append(d.row("acronym", question, start, phrase, question + phrase))
                break
    return out


ACRONYM_HINTS = (
    "stand for",
    "stands for",
    "acronym",
    "abbreviat",
    "short for",
    "initials",
    "named",
)


def spelled_out(acronym: str, context: str) -> bool:
    """Whether some run of words in context may spell out acronym: one that expands() it, or
    a loose one. Loose runs have up to twice as many words as letters plus two, and either
    their initials hold every letter in any order ("block Devices ... over a network" for
    NBD), or they start with the first letter and hold the others in order anywhere in their
    words ("convex optimization" for CVXOPT). The acronym itself is left out of the runs."""
    words = [w for w in re.findall(r"[A-Za-z][A-Za-z'/-]*", context) if w != acronym]
    letters = set(acronym.lower())
    width = 2 * len(acronym) + 2
    in_order = re.compile(".*?".join(re.escape(c) for c in acronym.lower()[1:]))
    for i in range(len(words)):
        run = words[i : i + width]
        if letters <= {w[0].lower() for w in run}:
            return True
        if run[0][0].lower() == acronym[0].lower() and in_order.search(" ".join(run).lower()):
            return True
        for k in range(1, len(acronym) + 4):
            if i + k <= len(words) and expands(acronym, " ".join(words[i : i + k])):
                return True
    return False


# Parts of package names of things that are not programs (fonts, themes, data, documentation):
# asking what language one is written in, who developed it or what it is a fork of is odd.
NOT_PROGRAMS = (
    "font",
    "theme",
    "icon",
    "sound",
    "music",
    "wallpaper",
    "artwork",
    "background",
    "dict",
    "wordlist",
    "firmware",
    "data",
    "doc",
    "example",
    "sample",
    "map",
    "tiles",
    "level",
    "texture",
    "skin",
    "cursor",
    "voice",
    "hyphen",
    "l10n",
    "locale",
    "translation",
    "emoji",
)


# A description of a package that holds only data ("this package only contains game-data").
DATA_ONLY = re.compile(r"game[- ]data|data files|only contains (?:the )?(?:game )?data", re.I)


def related(subject: str, package: str, common: set[str]) -> bool:
    """Whether a subject names the package: one of its words (three letters or more, not an
    ordinary word) is part of the package name ("Knot DNS" and knot)."""
    squeezed = re.sub(r"[^a-z0-9]", "", package)
    for word in subject.split():
        token = re.sub(r"[^a-z0-9]", "", word.lower())
        if len(token) >= 3 and token not in common and token in squeezed:
            return True
    return False


def unanswerable_questions(d: Description) -> list[dict]:
    """Rule questions asked of a description that does not answer them.

    The question names the description's main subject where its first sentence has one that
    is related() to the package, else the package. Language, licence, developer and fork
    questions are asked only of packages in software sections whose name does not give the
    language away (language, developer and fork ones only of programs, not of fonts, themes,
    data ...), and only if the context has none of the rule's hint words; the acronym question
    only about a main subject written in capitals that nothing in the context spells out.
    """
    out = []
    common = d.names.common
    subject = d.subject if d.subject and related(d.subject, d.package, common) else None
    name = as_question_subject(subject) if subject else d.package
    if subject and ACRONYM.fullmatch(subject):
        lowered = d.context.lower()
        # Besides an expansion the rule would find, any apposition next to the name ("X (...)",
        # "X - ...", "X, ...", "X: ...", "(X)") may spell it out in a way the rule misses.
        apposition = re.search(
            rf"\({subject}\b|\b{subject}(?: \(| -|,|:| stands| means)", d.context
        )
        hinted = apposition or any(h in lowered for h in ACRONYM_HINTS)
        if not hinted and not spelled_out(subject, d.context):
            out.append(("no-acronym", f"What does {subject} stand for?"))
    if d.section not in SOFTWARE_SECTIONS or LANGUAGE_PACKAGE.search(d.package):
        return [unanswerable(rule, q) for rule, q in out]
    program = not any(p.startswith(NOT_PROGRAMS) for p in re.split(r"[-.]", d.package))
    program = program and not DATA_ONLY.search(d.context)
    if not LICENCE_HINT.search(d.context):
        out.append(("no-license", f"Under which license is {name} released?"))
    if not program:
        return [unanswerable(rule, q) for rule, q in out]
    if not LANGUAGE_ANYWHERE.search(d.context) and not LANGUAGE_HINT.search(d.context):
        out.append(("no-language", f"What programming language is {name} written in?"))
    # Any capitalised word inside a sentence that is not widely shared (as "Linux" or "HTTP"
    # are) may name a person or a company ("the Voicetronix kernel modules").
    capitalised = re.findall(r"(?<=[a-z,;] )[A-Z][\w+.-]*", d.context)
    own = {w.lower() for w in name.split()}
    if not DEVELOPER_HINT.search(d.context) and all(
        w.lower() in common or w.lower() in own for w in capitalised
    ):
        out.append(("no-developer", f"Who developed {name}?"))
    if not FORK_HINT.search(d.context):
        out.append(("no-fork", f"What is {name} a fork of?"))
    return [unanswerable(rule, q) for rule, q in out]


def unanswerable(rule: str, question: str) -> dict:
    return {"rule": rule, "question": question, "text": None, "start": None, "key": question}


# The order in which one context's questions are offered to the selection: rare rules first.
PRIORITY = (
    "license",
    "developer",
    "fork",
    "language",
    "acronym",
    "contents",
    "definition",
    "no-acronym",
    "no-language",
    "no-fork",
    "no-developer",
    "no-license",
)


def questions(d: Description) -> list[dict]:
    """All questions the rules ask of one description: at most one per rule (the first)."""
    found = (
        definition_questions(d)
        + contents_questions(d)
        + predicate_questions(d)
        + acronym_questions(d)
        + unanswerable_questions(d)
    )
    first: dict[str, dict] = {}
    for q in found:
        first.setdefault(q["rule"], q)
    return sorted(first.values(), key=lambda q: PRIORITY.index(q["rule"]))


def answer_key(q: dict) -> str:
    """Definition and contents answers are capped by their text too ("the shared library");
    other rules (and unanswerable questions) get a key of their own that is never shared."""
    if q["rule"] in ("definition", "contents"):
        return q["rule"] + ":" + q["text"].lower()
    return q["rule"] + ":" + q["key"]


def word_position(context: str, start: int) -> int:
    """How many words of the context come before an answer."""
    return len(context[:start].split())


def select(
    asked: list[tuple[Description, list[dict]]],
    target: int,
    per_key: Counter[str],
    used_before: set[str],
    args: argparse.Namespace,
) -> list[tuple[Description, list[dict]]]:
    """Choose a split's questions from its contexts, taken in their (shuffled) order.

    Three passes: (1) contexts of --long-words words or more, answers furthest in first, until
    --long-share of the target; (2) contexts of at most --usual-words words, questions of the
    rare rules and the unanswerable ones only; (3) the same contexts, all rules, until the
    target. Each rule fills at most its share of the target, one context gives at most
    --per-context questions, and one sentence (or one definition or contents answer text, or
    one acronym with its expansion) at most --per-sentence, and only in one split: keys
    used_before by an earlier split are not taken again.
    """
    quota = {rule: round(share * target) for rule, share in SHARES.items()}
    taken: Counter[str] = Counter()
    chosen: dict[int, list[dict]] = defaultdict(list)
    rare = {"language", "fork", "developer", "license", *UNANSWERABLE}
    long_budget = round(args.long_share * target)
    for phase in ("long", "rare", "all"):
        limit = long_budget if phase == "long" else target
        for index, (d, found) in enumerate(asked):
            n_words = len(d.context.split())
            if phase == "long" and n_words < args.long_words:
                continue
            if phase != "long" and n_words > args.usual_words:
                continue
            if phase == "long":
                found = sorted(found, key=lambda q: -1 if q["start"] is None else -q["start"])
            for q in found:
                if sum(taken.values()) >= limit:
                    break
                key, answer = q["key"].lower(), answer_key(q)
                if (
                    (phase == "rare" and q["rule"] not in rare)
                    or taken[q["rule"]] >= quota[q["rule"]]
                    or len(chosen[index]) >= args.per_context
                    or q in chosen[index]
                    or per_key[key] >= args.per_sentence
                    or per_key[answer] >= args.per_sentence
                    or key in used_before
                    or answer in used_before
                ):
                    continue
                taken[q["rule"]] += 1
                per_key[key] += 1
                per_key[answer] += 1
                chosen[index].append(q)
    return [(asked[i][0], chosen[i]) for i in sorted(chosen) if chosen[i]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--sizes", type=int, nargs=3, default=[1200, 200, 200], metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument("--min-words", type=int, default=30, help="context, at least")
    parser.add_argument("--max-words", type=int, default=400, help="context, at most")
    parser.add_argument("--usual-words", type=int, default=250, help="longest ordinary context")
    parser.add_argument("--long-words", type=int, default=200, help="shortest long context")
    parser.add_argument("--long-share", type=float, default=0.2, help="rows from long ones")
    parser.add_argument("--per-context", type=int, default=3, help="questions per context")
    parser.add_argument("--per-sentence", type=int, default=2, help="rows per shared sentence")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    targets = dict(zip(SPLITS, args.sizes, strict=True))

    print(release_info())
    packages, translations = read_bookworm_lists()
    english = {t["Description-md5"]: t["Description-en"] for t in translations}
    counts: Counter[str] = Counter(packages=len(packages))
    candidates = []
    for pkg in packages:
        md5 = pkg.get("Description-md5", "")
        if md5 not in english:
            counts["no English description"] += 1
            continue
        paragraphs = description_paragraphs(english[md5])
        if paragraphs is None:
            counts["verbatim text (code, tables)"] += 1
            continue
        description = "\n".join(paragraphs)
        n_words = len(description.split())
        if n_words < args.min_words:
            counts[f"description under {args.min_words} words"] += 1
        elif n_words > args.max_words:
            counts[f"description over {args.max_words} words"] += 1
        else:
            candidates.append(
                {
                    "package": pkg["Package"],
                    "source": pkg.get("Source", pkg["Package"]).split(" ")[0],
                    "section": pkg.get("Section", "").split("/")[-1],
                    "description": description,
                }
            )
    candidates.sort(key=lambda r: (r["source"], binary_preference(r["package"], r["source"])))
    # Identical descriptions once; then one binary per source package (as in debian_summaries).
    seen: set[str] = set()
    by_source: dict[str, dict[str, str]] = {}
    for row in candidates:
        if row["description"] in seen:
            counts["duplicate description"] += 1
        elif row["source"] in by_source:
            counts["over 1 per source package"] += 1
        else:
            seen.add(row["description"])
            by_source[row["source"]] = row
    for reason, n in counts.items():
        print(f"{reason}: {n}")
    print(f"contexts: {len(by_source)}, one per source package")

    names = Names([row["description"] for row in by_source.values()])
    asked: dict[str, tuple[Description, list[dict]]] = {}
    available: Counter[str] = Counter()
    for source, row in by_source.items():
        d = Description(row, names)
        found = questions(d)
        available.update(q["rule"] for q in found)
        if found:
            asked[source] = (d, found)
    print("questions the rules ask, before selection:", dict(sorted(available.items())))

    # Split by source package: shuffled with the seed, the first eighth for validation, the
    # next eighth for test, the rest for train; then each split selects its questions.
    order = sorted(asked)
    random.Random(args.seed).shuffle(order)
    eighth = len(order) // 8
    print(f"sources with a question: {len(order)}; {eighth} each for validation and test")
    pools = {
        "validation": order[:eighth],
        "test": order[eighth : 2 * eighth],
        "train": order[2 * eighth :],
    }
    used_before: set[str] = set()
    rows_by_split: dict[str, list[dict]] = {}
    for split in ("validation", "test", "train"):
        per_key: Counter[str] = Counter()
        pool = [asked[s] for s in pools[split]]
        chosen = select(pool, targets[split], per_key, used_before, args)
        used_before |= set(per_key)
        rows = []
        for d, picked in chosen:
            for q in sorted(picked, key=lambda q: RULE_ORDER.index(q["rule"])):
                answered = q["text"] is not None
                rows.append(
                    {
                        "id": f"{d.package}-{q['rule']}-0",
                        "title": d.package,
                        "context": d.context,
                        "question": q["question"],
                        "answers": {
                            "text": [q["text"]] if answered else [],
                            "answer_start": [q["start"]] if answered else [],
                        },
                    }
                )
        rows_by_split[split] = rows

    args.out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        rows = rows_by_split[split]
        with open(args.out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                context, answers = row["context"], row["answers"]
                for text, start in zip(answers["text"], answers["answer_start"], strict=True):
                    assert context[start:].startswith(text)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        answerable = sum(bool(r["answers"]["text"]) for r in rows)
        print(
            f"{split}: {len(rows)} rows ({answerable} answerable, {len(rows) - answerable} "
            f"unanswerable), {len({r['title'] for r in rows})} contexts"
        )
    report([row for split in SPLITS for row in rows_by_split[split]], rows_by_split)


def report(rows: list[dict], rows_by_split: dict[str, list[dict]]) -> None:
    """Print the statistics the README records."""
    for split in SPLITS:
        by_rule = Counter(rule_of(r) for r in rows_by_split[split])
        print(split, "by rule:", {rule: by_rule[rule] for rule in RULE_ORDER})
    by_rule = Counter(rule_of(r) for r in rows)
    print("all by rule:", {rule: by_rule[rule] for rule in RULE_ORDER})
    contexts = {r["title"]: r["context"] for r in rows}
    print("contexts:", len(contexts))
    print("context words:", describe([len(c.split()) for c in contexts.values()]))
    answered = [r for r in rows if r["answers"]["text"]]
    print("answer words:", describe([len(r["answers"]["text"][0].split()) for r in answered]))
    positions = [word_position(r["context"], r["answers"]["answer_start"][0]) for r in answered]
    print("answer start word:", describe(positions))
    for limit in (100, 150):
        n = sum(p >= limit for p in positions)
        print(f"answers starting after word {limit}: {n} ({n / len(answered):.1%})")
    long_contexts = sum(len(c.split()) >= 200 for c in contexts.values())
    print(f"contexts of 200 words or more: {long_contexts}")
    print("question words:", describe([len(r["question"].split()) for r in rows]))
    per_context = Counter(r["title"] for r in rows).values()
    print(f"mean questions per context: {statistics.mean(per_context):.2f}")


def rule_of(row: dict) -> str:
    """The rule of a row, from its id ("<package>-<rule>-<n>")."""
    for rule in sorted(RULE_ORDER, key=len, reverse=True):
        if row["id"].endswith(f"-{rule}-0"):
            return rule
    raise ValueError(row["id"])


if __name__ == "__main__":
    main()
