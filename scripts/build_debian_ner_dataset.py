"""Build the shipped named-entity-recognition corpus from Debian's package descriptions.

Sentences come from the English long descriptions of Debian 12 (bookworm, main) packages. They
are tokenized, annotated with five entity types (LANG, FORMAT, PROTOCOL, ORG, OS) by the
gazetteer and context rules of the guideline in the corpus README, and written as CoNLL files
with IOB2 tags. Run on a Debian machine after `apt-get -o Acquire::Languages=en update`:

    python scripts/build_debian_ner_dataset.py --out src/lmforge/resources/debian_ner

The labels are produced by rules, not by human annotators; the rules were tuned on a
hand-reviewed sample of the output (see the README for the figures).
"""

from __future__ import annotations

import argparse
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

from build_debian_packages_dataset import read_bookworm_lists

# fmt: off
TYPES = ("LANG", "FORMAT", "PROTOCOL", "ORG", "OS")
DEBIAN_BLENDS = (
    "Med", "Edu", "Science", "Electronics", "GIS", "Games", "Multimedia", "Astro", "Junior",
    "Hamradio", "Accessibility", "Pan", "Parl", "Design", "EzGo", "Perl Group", "Python Team",
)
# A run of capitalized words ending in one of these heads is an organisation name as a whole
# ("Internet Software Consortium", "Thai Linux Working Group"); entities inside it are not
# tagged separately.
ORG_HEADS = {
    "Foundation", "Consortium", "Association", "Society", "Institute", "Corporation", "Group",
    "Laboratory", "Laboratories", "Inc", "Inc.", "Ltd", "Ltd.", "GmbH", "Alliance",
}
RUN_STOPWORDS = {"The", "A", "An", "This", "That", "Its", "By", "From", "Both", "All"}

# Gazetteer: surface forms (case-sensitive) per type. Multi-word forms are matched on tokens,
# longest match first. A form mapped to None blocks shorter matches inside it (licence names,
# product names that merely contain an entity word).
GAZETTEER: dict[str | None, list[str]] = {
    "LANG": [
        "Python", "Python2", "Python3", "python", "Perl", "perl", "Raku", "Ruby", "ruby", "PHP",
        "php", "Java", "java", "JavaScript", "Javascript", "javascript", "ECMAScript", "TypeScript",
        "CoffeeScript", "C++", "C#", "F#", "Objective-C", "Objective-C++", "C89", "C90", "C99",
        "C11", "C17", "C++11", "C++14", "C++17", "C++20", "Rust", "Lua", "lua", "Tcl", "tcl",
        "Haskell", "OCaml", "Erlang", "Elixir", "Scala", "Kotlin", "Groovy", "Clojure",
        "ClojureScript", "Common Lisp", "Emacs Lisp", "Elisp", "Lisp", "Scheme", "Racket",
        "Fortran", "FORTRAN", "COBOL", "Pascal", "Object Pascal", "Ada",
        "Prolog", "Smalltalk", "Vala", "Cython", "Dart", "Nim", "Zig", "Haxe", "Idris", "Agda",
        "Standard ML", "Visual Basic", "BASIC", "Forth", "AWK", "Awk", "VHDL", "Verilog",
        "SystemVerilog", "Modula-2", "Oberon", "Eiffel", "Pike", "REXX", "Rexx", "S-Lang", "GLSL",
        "WebAssembly", "SQL", "PL/SQL", "PL/pgSQL", "PL/Tcl", "PL/Perl", "PL/Python", "SPARQL",
        "GraphQL", "XQuery", "XPath", "XSLT", "XSL", "HTML", "HTML5", "XHTML", "SGML", "CSS",
        "CSS3", "Markdown", "reStructuredText", "AsciiDoc", "Texinfo", "TeX", "LaTeX",
        # context-dependent (see CONTEXT below)
        "C", "Go", "R", "D", "Swift", "Julia", "Crystal", "Puppet",
    ],
    "FORMAT": [
        "PNG", "JPEG", "JPG", "JPEG 2000", "GIF", "TIFF", "SVG", "PDF", "PostScript", "Postscript",
        "EPS", "XML", "JSON", "YAML", "TOML", "CSV", "TSV", "MP3", "Ogg", "Ogg Vorbis", "Vorbis",
        "Ogg Theora", "Theora", "Opus", "FLAC", "WAV", "AAC", "MPEG", "MPEG-1", "MPEG-2", "MPEG-4",
        "MP4", "H.264", "H.265", "HEVC", "AVI", "Matroska", "MKV", "WebM", "WebP", "OpenDocument",
        "ODF", "RTF", "EPUB", "DjVu", "DocBook", "HDF5", "NetCDF", "netCDF", "FITS", "DICOM",
        "GeoTIFF", "KML", "GPX", "ZIP", "iCalendar", "vCard", "BibTeX", "RSS", "OpenEXR", "EXR",
        "ELF", "Protocol Buffers", "MessagePack", "BSON", "ASN.1", "X.509", "PEM", "ID3", "EXIF",
        "Exif", "XCF", "PSD", "XPM", "PPM", "PGM", "PBM", "PNM", "TGA", "PCX", "TrueType",
        "OpenType", "WOFF", "LDIF", "mbox", "Maildir", "pcap", "PCAP", "glTF", "DXF", "FASTA",
        "FASTQ", "BAM", "VCF", "GFF", "mzML", "VRML", "Zip", "JavaScript Object Notation",
        "JPEG XL", "AVIF", "HEIF", "OGG", "GeoJSON", "CBOR", "Parquet",
        # context-dependent
        "SAM", "BMP",
    ],
    "PROTOCOL": [
        "HTTP", "HTTPS", "SMTP", "ESMTP", "LMTP", "IMAP", "IMAP4", "IMAPS", "POP3", "POP3S", "FTP",
        "FTPS", "SFTP", "TFTP", "SSH", "SSL", "TLS", "DTLS", "TCP", "UDP", "SCTP", "QUIC", "IP",
        "IPv4", "IPv6", "TCP/IP", "ICMP", "DNS", "DNSSEC", "DHCP", "DHCPv6", "NTP", "SNMP", "LDAP",
        "LDAPS", "XMPP", "Jabber", "IRC", "SIP", "RTP", "RTSP", "RTMP", "WebSocket", "WebSockets",
        "WebDAV", "CalDAV", "CardDAV", "NFS", "SMB", "CIFS", "Bluetooth", "MQTT", "AMQP", "STOMP",
        "XML-RPC", "JSON-RPC", "SOAP", "BitTorrent", "NNTP", "Telnet", "VNC", "RDP", "Kerberos",
        "RADIUS", "OAuth", "OAuth2", "OpenID", "SAML", "PPP", "PPPoE", "ARP", "BGP", "OSPF",
        "IPsec", "IPSec", "WireGuard", "Zeroconf", "mDNS", "DNS-SD", "UPnP", "DLNA", "Modbus",
        "iSCSI", "NBD", "WebRTC", "9P", "AX.25", "APRS", "MIDI", "OSC", "Open Sound Control",
        "Gopher", "ActivityPub", "SSDP", "SNTP", "PTP", "NetFlow", "OpenFlow", "NETCONF", "RSH",
        "Ethernet", "SRU", "SRW",
    ],
    "ORG": [
        "GNU", "GNU Project", "KDE", "GNOME", "Xfce", "XFCE", "LXDE", "LXQt", "MATE", "Debian",
        "Debian Project", "Ubuntu", "Fedora", "Red Hat", "RedHat", "SUSE", "SuSE", "openSUSE",
        "Gentoo", "Arch Linux", "Slackware", "Mandriva", "Mageia", "CentOS", "Linux Mint",
        "Kali Linux", "Raspbian", "Devuan", "Progress Linux", "Debian GNU/Linux", "Mozilla",
        "Mozilla Foundation", "Apache Software Foundation", "Free Software Foundation", "FSF",
        "Python Software Foundation", "Perl Foundation", "Linux Foundation", "Document Foundation",
        "Eclipse Foundation", "Xiph.Org", "Xiph.org", "Xiph.Org Foundation", "Xiph", "W3C",
        "World Wide Web Consortium", "IETF", "IEEE", "Unicode Consortium", "OASIS", "OSGeo",
        "OpenStack", "X.Org", "X.Org Foundation", "freedesktop.org", "Freedesktop.org",
        "FreeDesktop.org", "GitHub", "Github", "GitLab", "SourceForge", "Canonical", "Google",
        "Microsoft", "Apple", "IBM", "Intel", "AMD", "NVIDIA", "Nvidia", "nVidia",
        "Sun Microsystems", "Oracle", "Adobe", "Netscape", "Novell", "Valve", "Hewlett-Packard",
        "HP", "Epson", "Canon", "Samsung", "Nokia", "Motorola", "Cisco", "Dell", "Lenovo",
        "Logitech", "Broadcom", "Qualcomm", "Realtek", "Texas Instruments", "Xilinx", "Altera",
        "Atmel", "Yamaha", "Roland", "Sony", "Nintendo", "Sega", "Facebook", "Twitter", "Yahoo",
        "Amazon", "Dropbox", "CERN", "NASA", "NOAA", "USGS", "MIT", "Bell Labs", "AT&T", "Xerox",
        "Bioconductor", "Wikimedia", "Wikimedia Foundation", "Raspberry Pi Foundation", "Trolltech",
        "Digia", "Siemens", "Mozilla Corporation", "Linaro", "Khronos Group",
        "Internet Systems Consortium",
        # Debian Pure Blends are teams of the Debian project.
        *(f"Debian {blend}" for blend in DEBIAN_BLENDS),
    ],
    "OS": [
        "Linux", "GNU/Linux", "Windows", "Microsoft Windows", "MS Windows", "MS-Windows", "macOS",
        "MacOS", "MacOSX", "Mac OS", "Mac OS X", "OS X", "OSX", "iOS", "Android", "FreeBSD",
        "NetBSD", "OpenBSD", "DragonFly BSD", "DragonFlyBSD", "kFreeBSD", "GNU/kFreeBSD", "Hurd",
        "GNU/Hurd", "GNU Hurd", "Solaris", "OpenSolaris", "illumos", "SunOS", "AIX", "HP-UX",
        "HPUX", "Unixes", "Unices", "IRIX", "Unix", "UNIX", "MS-DOS", "DOS", "FreeDOS", "OS/2",
        "AmigaOS", "BeOS", "Haiku", "ReactOS", "Minix", "MINIX", "QNX", "Plan 9", "RISC OS",
        "Chrome OS", "ChromeOS", "Chromium OS", "Tizen", "Darwin", "Symbian", "Palm OS", "webOS",
        "Win32", "IOS", "VMS", "OpenVMS", "NetWare", "EPOC", "Epoc",
        # context-dependent
        "BSD",
    ],
    None: [
        # Licence names are not entities (see README); neither are these product names.
        "Ruby on Rails", "X Window System", "Darwin Information Typing Architecture",
        "Linux Libertine", "Linux Biolinum", "Basic Multilingual Plane",
        "Debian Free Software Guidelines",
    ],
}

LICENCE_WORDS = {
    "License", "Licence", "license", "licence", "licensed", "licenses", "licences", "GPL", "LGPL",
    "AGPL", "FDL", "GFDL", "Licenses", "Licences",
}
LICENCE_FILLERS = {
    "General", "Lesser", "Library", "Affero", "Free", "Documentation", "Public", "Software",
    "Artistic", "Open", "Source", "Foundation", "Version", "version", "or", "style", "(",
}
LIST_JOINERS = {",", "and", "or", "/", "&", "nor"}
BOUNDARY = {".", ",", ";", ":", ")", "!", "?", "and", "or", "/", "-", "'s", '"'}

LANG_NEXT = {
    "library", "libraries", "language", "languages", "programming", "code", "compiler", "compilers",
    "bindings", "binding", "binaries", "package", "packages", "module", "modules", "implementation",
    "implementations", "port", "source", "sources", "header", "headers", "API", "APIs", "interface",
    "interfaces", "programs", "program", "applications", "application", "extension", "extensions",
    "wrapper", "wrappers", "functions", "standard", "toolchain", "runtime", "developers",
    "programmers", "projects", "project", "structs", "types", "preprocessor", "client", "version",
    "versions", "scripts", "script", "users", "classes", "objects", "models", "session", "console",
    "environment", "statistical", "community", "frontend", "front-end", "parser", "plugin",
    "plugins", "tool", "tools", "object-oriented", "SDK", "style", "syntax", "files",
    "compiled", "dialect", "dialects", "routines", "snippets",
    "struct", "backend",
}
GO_GAME_WORDS = {
    "game", "games", "board", "SGF", "sgf", "GTP", "Igo", "Baduk", "Weiqi", "stones", "player",
    "players", "play", "playing", "opponent", "kifu", "joseki",
}
# Context rules for ambiguous forms: "next" = allowed following tokens, "prev" = preceding
# tokens that license the tag when the form ends a phrase (next token is a boundary),
# "prev_any" = preceding tokens that license it always; a form also counts when it sits in a
# coordinated list next to an entity of the same type ("C and C++", "C/C++").
CONTEXT: dict[str, dict[str, set[str]]] = {
    "C": {
        "next": LANG_NEXT,
        "prev": {"in", "for", "from", "with", "to", "into", "using", "of"},
        "prev_any": {"ANSI", "ISO", "pure", "portable", "standard", "plain", "Standard"},
    },
    "Go": {
        "next": LANG_NEXT,
        "prev": {"in", "for", "from", "with", "to", "into", "using", "compiles"},
        "prev_any": {"pure", "idiomatic", "native", "compiles"},
    },
    "R": {
        "next": LANG_NEXT | {"data", "plots", "graphics", "packaging", "users", "matrices"},
        "prev": {"in", "for", "from", "with", "to", "into", "using", "within"},
        "prev_any": {"GNU"},
    },
    "D": {
        "next": {"programming", "language", "compiler", "compilers", "standard", "code"},
        "prev": {"compiles"},
        "prev_any": set(),
    },
    "Swift": {"next": {"programming", "language", "compiler"}, "prev": set(), "prev_any": set()},
    "Julia": {
        "next": {"programming", "language", "code", "package", "packages", "version"},
        "prev": set(),
        "prev_any": set(),
    },
    "Crystal": {
        "next": {"programming", "language", "object-oriented", "compiler"},
        "prev": set(),
        "prev_any": set(),
    },
    "SAM": {
        "next": {"format", "formats", "file", "files", "records", "output", "input", "and", "/"},
        "prev": set(),
        "prev_any": set(),
    },
    "Puppet": {"next": {"language", "programming", "code"}, "prev": set(), "prev_any": set()},
    "BMP": {
        "next": {"format", "formats", "file", "files", "image", "images", "bitmaps", "output"},
        "prev": set(),
        "prev_any": set(),
    },
    # The company, not the adjective ("Canonical JSON", "canonical form").
    "Canonical": {
        "next": {"Ltd", "Ltd.", "'s", "Group"},
        "prev": {"by", "from", "of", "at", "with", "and", "for", "to"},
        "prev_any": set(),
    },
    "BSD": {
        "next": {
            "systems", "system", "variants", "platforms", "derivatives", "flavors", "flavours",
            "kernels", "kernel", "family", "OSes", "operating", "and", "or", "/", ",",
        },
        "prev": {"on", "under", "for"},
        "prev_any": set(),
    },
}
SENTENCE_START_NOT_OS = {
    "are", "can", "may", "will", "should", "must", "could", "might", "have", "get", "become",
}

ABBREVIATIONS = {
    "e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "incl.", "Dr.", "Mr.", "Mrs.", "Ms.", "Prof.",
    "St.", "Inc.", "Ltd.", "Co.", "Jr.", "No.", "Fig.", "al.", "resp.", "esp.", "ca.", "eg.", "ie.",
    "Eg.", "E.g.", "I.e.", "viz.", "a.k.a.", "aka.", "min.", "max.",
}
# Slash compounds that stay one token; other word/word tokens are split at the slash.
SLASH_KEEP = {
    "GNU/Linux", "GNU/kFreeBSD", "GNU/Hurd", "TCP/IP", "I/O", "OS/2", "PL/SQL", "PL/pgSQL",
    "PL/Tcl", "PL/Perl", "PL/Python", "A/V", "N/A", "and/or", "AC/DC", "MS/DOS", "UDP/IP",
}
OPENERS = "(\"'[{<\u201c\u2018\u00ab"
CLOSERS = ")\"'],;:!?}>\u201d\u2019\u00bb.\u2026\u00ae\u2122"
# fmt: on


def segments(description: str) -> list[str]:
    """Return the prose segments of a long description: paragraphs and list items.

    The synopsis (first line) is dropped; lines indented by two or more spaces are verbatim
    text (code, tables) in Debian's description format and are dropped too.
    """
    out: list[str] = []
    current: list[str] = []
    for line in description.split("\n")[1:]:
        if line.startswith("  ") or line.strip() == ".":
            if current:
                out.append(" ".join(current))
            current = []
            continue
        stripped = line.strip()
        if re.match(r"^([*+•-]|o\s)\s*", stripped):
            if current:
                out.append(" ".join(current))
            current = [re.sub(r"^([*+•-]|o\s)\s*", "", stripped)]
        else:
            current.append(stripped)
    if current:
        out.append(" ".join(current))
    return [re.sub(r"\s+", " ", s).strip() for s in out if s.strip()]


def split_sentences(segment: str) -> list[list[str]]:
    """Split a segment into sentences of whitespace-separated words (not yet tokenized)."""
    words = segment.split(" ")
    sentences, current = [], []
    for i, word in enumerate(words):
        current.append(word)
        nxt = words[i + 1] if i + 1 < len(words) else ""
        core = word.rstrip("\"')]\u201d\u2019")
        if (
            nxt
            and core.endswith((".", "!", "?"))
            and core not in ABBREVIATIONS
            and not re.fullmatch(r"(?:[A-Za-z]\.)+", core)
            and re.match(r"[A-Z0-9\"'(“]", nxt)
        ):
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def tokenize_word(word: str, last: bool) -> list[str]:
    """Split one whitespace-delimited word into tokens (punctuation off, names kept whole)."""
    head: list[str] = []
    tail: list[str] = []
    while len(word) > 1 and word[0] in OPENERS:
        head.append(word[0])
        word = word[1:]
    while word and (last or word not in ABBREVIATIONS):
        if word.endswith("...") and len(word) > 3:
            tail.insert(0, "...")
            word = word[:-3]
        elif word.endswith(("'s", "\u2019s")) and len(word) > 2:
            tail.insert(0, "'s")
            word = word[:-2]
        elif (
            len(word) > 1
            and word[-1] in CLOSERS
            and not (word[-1] == ")" and word.count("(") >= word.count(")"))
        ):
            tail.insert(0, word[-1])
            word = word[:-1]
        else:
            break
    middle: list[str] = []
    if word:
        if (
            "/" in word
            and word not in SLASH_KEEP
            and not word.startswith(("/", "~", "."))
            and not re.fullmatch(r"[\d/.]+", word)
        ):
            parts = word.split("/")
            for k, part in enumerate(parts):
                if part:
                    middle.append(part)
                if k < len(parts) - 1:
                    middle.append("/")
        else:
            middle.append(word)
    return head + middle + tail


def tokenize(words: list[str]) -> list[str]:
    """Tokenize a sentence given as whitespace-separated words."""
    tokens: list[str] = []
    for i, word in enumerate(words):
        tokens.extend(tokenize_word(word, last=i == len(words) - 1))
    return tokens


def build_lexicon() -> tuple[dict[tuple[str, ...], str | None], int]:
    """Map each gazetteer form, as a token tuple, to its type (None: blocked phrase)."""
    lexicon: dict[tuple[str, ...], str | None] = {}
    for etype, forms in GAZETTEER.items():
        for form in forms:
            key = tuple(tokenize(form.split(" ")))
            assert key not in lexicon or lexicon[key] == etype, form
            lexicon[key] = etype
    return lexicon, max(len(k) for k in lexicon)


def licence_follows(tokens: list[str], end: int) -> bool:
    """True if tokens[end:] continue into a licence name ("GNU General Public License")."""
    for tok in tokens[end : end + 6]:
        if tok in LICENCE_WORDS:
            return True
        if tok in LICENCE_FILLERS or re.fullmatch(r"v?\d[\d.]*\+?|-", tok):
            continue
        return False
    return False


def org_runs(
    tokens: list[str], spans: list[tuple[int, int, str, str]]
) -> list[tuple[int, int, str, str]]:
    """Replace spans inside capitalized names ending in an ORG head by one ORG span."""
    for end in range(1, len(tokens)):
        if tokens[end] not in ORG_HEADS:
            continue
        start = end
        while start > 0 and re.match(r"[A-Z]", tokens[start - 1]):
            start -= 1
        while start < end and tokens[start] in RUN_STOPWORDS:
            start += 1
        # The name must end at the head ("Team Foundation Server" is a product, not an ORG).
        if end + 1 < len(tokens) and re.match(r"[A-Z]", tokens[end + 1]):
            continue
        if start == end or any(s[0] < start < s[1] or s[0] <= end < s[1] - 1 for s in spans):
            continue
        spans = [s for s in spans if not start <= s[0] <= end]
        spans.append((start, end + 1, "ORG", " ".join(tokens[start : end + 1])))
    return sorted(spans)


def annotate(
    tokens: list[str], lexicon: dict[tuple[str, ...], str | None], max_len: int
) -> list[str]:
    """Return IOB2 tags for a tokenized sentence, following the guideline rules."""
    spans: list[tuple[int, int, str, str]] = []  # start, end, type, surface (1-token forms)
    i = 0
    while i < len(tokens):
        for n in range(min(max_len, len(tokens) - i), 0, -1):
            key = tuple(tokens[i : i + n])
            if key in lexicon:
                etype = lexicon[key]
                if etype is not None and not licence_follows(tokens, i + n):
                    spans.append((i, i + n, etype, " ".join(key)))
                i += n
                break
        else:
            i += 1
    spans = org_runs(tokens, spans)
    sure = [s for s in spans if s[3] not in CONTEXT]
    typed_at = {k: s[2] for s in sure for k in range(s[0], s[1])}
    kept = list(sure)
    lower = {t.lower() for t in tokens}
    for start, end, etype, surface in spans:
        if surface not in CONTEXT:
            continue
        rules = CONTEXT[surface]
        prev = tokens[start - 1] if start > 0 else ""
        nxt = tokens[end] if end < len(tokens) else ""
        ok = (
            nxt in rules["next"]
            or prev in rules["prev_any"]
            or (prev in rules["prev"] and (nxt in BOUNDARY or not nxt))
        )
        # Coordinated with an entity of the same type: "C and C++", "C/C++", "Linux, BSD".
        if not ok:
            for pos, step in ((start - 1, -1), (end, 1)):
                if 0 <= pos < len(tokens) and tokens[pos] in LIST_JOINERS:
                    other = pos + step
                    if 0 <= other < len(tokens) and typed_at.get(other) == etype:
                        ok = True
        if surface == "Go" and lower & {w.lower() for w in GO_GAME_WORDS}:
            ok = False
        if surface == "C" and nxt in {"major", "minor", "sharp", "flat"}:
            ok = False
        if ok:
            kept.append((start, end, etype, surface))
    tags = ["O"] * len(tokens)
    for start, end, etype, surface in kept:
        nxt = tokens[end] if end < len(tokens) else ""
        if surface == "Windows" and start == 0 and nxt in SENTENCE_START_NOT_OS:
            continue
        if surface == "AMD" and lower & {"commonjs", "requirejs", "umd"}:
            continue  # Asynchronous Module Definition, a JavaScript module format
        tags[start] = f"B-{etype}"
        for k in range(start + 1, end):
            tags[k] = f"I-{etype}"
    return tags


def usable(words: list[str], tokens: list[str]) -> bool:
    """Keep prose sentences of 6-60 tokens; drop URLs, markup, code and symbol soup."""
    text = " ".join(words)
    if not 6 <= len(tokens) <= 60:
        return False
    if re.search(r"https?://|www\.|ftp://|@|\[|\]|<|>|\{|\}|`|=|\|", text):
        return False
    if "." in tokens[:-1] or not re.match(r"[A-Z0-9\"'(]", text):
        return False
    alpha = sum(1 for t in tokens if re.search(r"[A-Za-z]", t))
    return alpha >= 0.6 * len(tokens)


def validate(path: Path) -> None:
    """Check a written file: 2 tab-separated fields per line, valid IOB2 tags."""
    valid = {"O"} | {f"{p}-{t}" for p in "BI" for t in TYPES}
    text = path.read_text(encoding="utf-8")
    assert text.startswith("-DOCSTART-\tO\n\n") and text.endswith("\n"), path
    prev = "O"
    for n, line in enumerate(text.split("\n")[:-1], 1):
        if not line:
            prev = "O"
            continue
        fields = line.split("\t")
        assert len(fields) == 2 and fields[0] and fields[1] in valid, (path, n, line)
        tag = fields[1]
        assert not tag.startswith("I-") or prev[2:] == tag[2:], (path, n, line)
        prev = tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=900, help="number of sentences")
    parser.add_argument("--entity-share", type=float, default=0.68)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=0, help="print N sentences for review")
    parser.add_argument("--show-seed", type=int, default=1, help="seed of the review sample")
    args = parser.parse_args()

    packages, translations = read_bookworm_lists()
    source_by_md5: dict[str, str] = {}
    for pkg in packages:
        if "Description-md5" in pkg:
            source = pkg.get("Source", pkg["Package"]).split(" ")[0]
            source_by_md5.setdefault(pkg["Description-md5"], source)

    lexicon, max_len = build_lexicon()
    # Candidate sentences per source package; a sentence is kept once across the archive.
    candidates: dict[str, list[tuple[list[str], list[str]]]] = defaultdict(list)
    seen: set[str] = set()
    opening: Counter[str] = Counter()
    for entry in sorted(translations, key=lambda t: t["Package"]):
        source = source_by_md5.get(entry.get("Description-md5", ""))
        if source is None:
            continue
        for segment in segments(entry["Description-en"]):
            for words in split_sentences(segment):
                tokens = tokenize(words)
                key = re.sub(r"\d+", "0", " ".join(tokens).lower())
                if key in seen or not usable(words, tokens):
                    continue
                seen.add(key)
                candidates[source].append((tokens, annotate(tokens, lexicon, max_len)))

    # Selection: shuffle sources, take at most 2 sentences per source, cycle over entity types
    # so rare types are represented, then fill up with entity-free sentences.
    rng = random.Random(args.seed)
    sources = sorted(candidates)
    rng.shuffle(sources)
    by_type: dict[str, list[tuple[str, int]]] = {t: [] for t in TYPES}
    plain: list[tuple[str, int]] = []
    for source in sources:
        for idx, (_, tags) in enumerate(candidates[source]):
            present = sorted({t[2:] for t in tags if t != "O"})
            if present:
                by_type[rng.choice(present)].append((source, idx))
            else:
                plain.append((source, idx))
    for items in by_type.values():
        rng.shuffle(items)
    rng.shuffle(plain)
    n_entity = round(args.size * args.entity_share)
    chosen: list[tuple[str, int]] = []
    per_source: Counter[str] = Counter()

    def take(item: tuple[str, int]) -> bool:
        source, idx = item
        tokens = candidates[source][idx][0]
        start = " ".join(tokens[:4])
        if per_source[source] >= 2 or opening[start] >= 3:
            return False
        per_source[source] += 1
        opening[start] += 1
        chosen.append(item)
        return True

    cursors = dict.fromkeys(TYPES, 0)
    while len(chosen) < n_entity and any(cursors[t] < len(by_type[t]) for t in TYPES):
        for etype in TYPES:
            while cursors[etype] < len(by_type[etype]):
                cursors[etype] += 1
                if take(by_type[etype][cursors[etype] - 1]):
                    break
            if len(chosen) >= n_entity:
                break
    for item in plain:
        if len(chosen) >= args.size:
            break
        take(item)

    # Split 70/10/20 by source package: no package contributes to two splits.
    grouped: dict[str, list[int]] = defaultdict(list)
    for source, idx in chosen:
        grouped[source].append(idx)
    order = sorted(grouped)
    rng.shuffle(order)
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "validation": [], "test": []}
    for source in order:
        split = "train"
        if len(splits["validation"]) < 0.1 * len(chosen):
            split = "validation"
        elif len(splits["test"]) < 0.2 * len(chosen):
            split = "test"
        splits[split] += [(source, idx) for idx in grouped[source]]

    args.out.mkdir(parents=True, exist_ok=True)
    print("| split | sentences | with entity | tokens | " + " | ".join(TYPES) + " |")
    for split, items in splits.items():
        rng.shuffle(items)
        lines = ["-DOCSTART-\tO", ""]
        counts: Counter[str] = Counter()
        n_tokens = n_with = 0
        for source, idx in items:
            tokens, tags = candidates[source][idx]
            lines += [f"{tok}\t{tag}" for tok, tag in zip(tokens, tags, strict=True)] + [""]
            counts.update(t[2:] for t in tags if t.startswith("B-"))
            n_tokens += len(tokens)
            n_with += any(t != "O" for t in tags)
        path = args.out / f"{split}.conll"
        path.write_text("\n".join(lines), encoding="utf-8")
        validate(path)
        row = [split, len(items), n_with, n_tokens] + [counts[t] for t in TYPES]
        print("| " + " | ".join(str(v) for v in row) + " |")

    if args.show:
        review = list(chosen)
        random.Random(args.show_seed).shuffle(review)
        for source, idx in review[: args.show]:
            tokens, tags = candidates[source][idx]
            shown = [
                tok if tag == "O" else f"[{tok}|{tag}]"
                for tok, tag in zip(tokens, tags, strict=True)
            ]
            print(f"{source}: {' '.join(shown)}")


if __name__ == "__main__":
    main()
