//! Key-naming patterns: the pattern language, and the one matcher compiled from the patterns
//! of every namespace.
//!
//! # The pattern language
//!
//! A key is a sequence of `:`-separated segments (`{system}:{entity}:{identifier}:{context}`),
//! and so is a pattern. Each pattern segment is one of:
//!
//! - a **literal**, such as `session` or `core`: the key segment must be exactly these bytes
//!   (case-sensitive);
//! - a **placeholder** `{name}`: any one non-empty segment (`name` documents what goes there and
//!   is otherwise ignored: `session:{id}` and `session:{user}` are the same pattern);
//! - a **remainder** `{name...}`, last segment only: one or more further non-empty segments.
//!
//! Key segments are never empty: `session:`, `:x`, `a::b` and the empty key are refused before
//! any pattern is consulted. A placeholder is a whole segment (`user{id}` is an error), so the
//! convention's bad examples (`user123`, `123_limit`) cannot be matched by accident. Braces in a
//! *key* are ordinary bytes: `session:{42}` (a cluster hash tag) matches `session:{id}`.
//!
//! When several patterns match one key, the most specific wins, comparing segment by segment
//! from the left: a literal beats a placeholder, which beats a remainder. So with
//! `session:{id}` in one namespace and `session:core:{id}` in another, `session:core:7` belongs
//! to the second and `session:7` to the first. Two namespaces may not list the same pattern.
//!
//! # The matcher
//!
//! All patterns are compiled together into a trie over segments (the NFA: placeholders and
//! remainders are "any segment" edges, a remainder node loops on itself), which is then
//! determinised into a DFA whose states are sets of trie nodes. Matching a key is one walk over
//! its segments with one binary search per segment: no backtracking, no loop over rules, and no
//! allocation. The DFA's size is bounded at compile time ([`MAX_STATES`]).

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};

use super::NsId;

/// Most segments in one pattern; keys may have more (a remainder absorbs them).
pub const MAX_SEGMENTS: usize = 32;
/// Most DFA states; far above any realistic policy, low enough to bound memory.
pub const MAX_STATES: usize = 100_000;

/// One parsed pattern segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(Box<[u8]>),
    Placeholder,
    Rest,
}

/// Why a pattern is not valid; the message says how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is empty")]
    Empty,
    #[error("segment {0} is empty: segments between ':' must not be empty")]
    EmptySegment(usize),
    #[error("segment {0:?} mixes text and braces: a placeholder is a whole segment, like {{id}}")]
    Mixed(String),
    #[error("placeholder {0:?} needs a name of letters, digits or '_', like {{id}}")]
    BadName(String),
    #[error("{0:?} takes the rest of the key and must be the last segment")]
    RestNotLast(String),
    #[error("segment {0:?} uses a glob character: use {{id}} for one segment or {{rest...}} for the remainder")]
    Glob(String),
    #[error("too many segments (at most {MAX_SEGMENTS})")]
    TooLong,
}

/// Parses one pattern such as `rate_limit:{action}:{id}` or `temp:{kind}:{rest...}`.
pub fn parse(text: &str) -> Result<Vec<Segment>, PatternError> {
    if text.is_empty() {
        return Err(PatternError::Empty);
    }
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() > MAX_SEGMENTS {
        return Err(PatternError::TooLong);
    }
    let mut out = Vec::with_capacity(parts.len());
    for (i, seg) in parts.iter().enumerate() {
        if seg.is_empty() {
            return Err(PatternError::EmptySegment(i + 1));
        }
        let braced = seg.len() >= 2 && seg.starts_with('{') && seg.ends_with('}');
        if braced {
            let inner = &seg[1..seg.len() - 1];
            let (name, rest) = match inner.strip_suffix("...") {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(PatternError::BadName((*seg).to_string()));
            }
            if rest {
                if i + 1 != parts.len() {
                    return Err(PatternError::RestNotLast((*seg).to_string()));
                }
                out.push(Segment::Rest);
            } else {
                out.push(Segment::Placeholder);
            }
        } else if seg.contains(['{', '}']) {
            return Err(PatternError::Mixed((*seg).to_string()));
        } else if seg.contains(['*', '?', '[']) {
            return Err(PatternError::Glob((*seg).to_string()));
        } else {
            out.push(Segment::Literal(seg.as_bytes().into()));
        }
    }
    Ok(out)
}

/// What a key is, as far as naming goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMatch {
    Namespace(NsId),
    /// Well-formed but matching no pattern.
    NoMatch,
    /// Empty, or with an empty segment (`session:`, `a::b`).
    EmptySegment,
}

/// A pattern could not be added to the matcher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// The same pattern (placeholder names aside) was given twice; carries the first owner.
    #[error("the same pattern is already listed in namespace #{0}")]
    Duplicate(NsId),
    #[error(
        "the patterns are too many or too ambiguous to compile (over {MAX_STATES} matcher states)"
    )]
    TooComplex,
}

const DEAD: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Literal,
    Placeholder,
    Rest,
}

#[derive(Debug, Default)]
struct TrieNode {
    lits: Vec<(Box<[u8]>, usize)>,
    any: Option<usize>,
    rest: Option<usize>,
    /// A remainder node: it has consumed at least one segment and loops on every further one.
    looping: bool,
    accept: Option<NsId>,
    /// Kinds of the edges from the root, for "most specific wins".
    path: Vec<Kind>,
}

/// Builds the trie pattern by pattern, then compiles it.
#[derive(Debug)]
pub struct Builder {
    nodes: Vec<TrieNode>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            nodes: vec![TrieNode::default()],
        }
    }
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one parsed pattern for namespace `ns`.
    pub fn add(&mut self, segments: &[Segment], ns: NsId) -> Result<(), CompileError> {
        let mut at = 0usize;
        for seg in segments {
            let next = match seg {
                Segment::Literal(l) => self.nodes[at]
                    .lits
                    .iter()
                    .find(|(k, _)| k == l)
                    .map(|(_, n)| *n),
                Segment::Placeholder => self.nodes[at].any,
                Segment::Rest => self.nodes[at].rest,
            };
            at = match next {
                Some(n) => n,
                None => {
                    let kind = match seg {
                        Segment::Literal(_) => Kind::Literal,
                        Segment::Placeholder => Kind::Placeholder,
                        Segment::Rest => Kind::Rest,
                    };
                    let mut path = self.nodes[at].path.clone();
                    path.push(kind);
                    let id = self.nodes.len();
                    self.nodes.push(TrieNode {
                        looping: kind == Kind::Rest,
                        path,
                        ..TrieNode::default()
                    });
                    match seg {
                        Segment::Literal(l) => self.nodes[at].lits.push((l.clone(), id)),
                        Segment::Placeholder => self.nodes[at].any = Some(id),
                        Segment::Rest => self.nodes[at].rest = Some(id),
                    }
                    id
                }
            };
        }
        match self.nodes[at].accept {
            Some(owner) => Err(CompileError::Duplicate(owner)),
            None => {
                self.nodes[at].accept = Some(ns);
                Ok(())
            }
        }
    }

    /// Kind of trie node `n`'s path at position `i`, remainder nodes padded with `Rest`.
    fn kind_at(&self, n: usize, i: usize) -> Option<Kind> {
        let node = &self.nodes[n];
        match node.path.get(i) {
            Some(k) => Some(*k),
            None if node.looping => Some(Kind::Rest),
            None => None,
        }
    }

    /// Orders two accepting nodes reached by the same key: `Less` means `a` is more specific.
    fn specificity(&self, a: usize, b: usize) -> Ordering {
        let len = self.nodes[a].path.len().max(self.nodes[b].path.len());
        for i in 0..len {
            match self.kind_at(a, i).cmp(&self.kind_at(b, i)) {
                Ordering::Equal => {}
                other => return other,
            }
        }
        a.cmp(&b)
    }

    /// Determinises the trie.
    pub fn compile(self) -> Result<Matcher, CompileError> {
        let mut states: Vec<State> = Vec::new();
        let mut ids: HashMap<Vec<usize>, u32> = HashMap::new();
        let mut queue: VecDeque<Vec<usize>> = VecDeque::new();
        let start = vec![0usize];
        ids.insert(start.clone(), 0);
        queue.push_back(start);
        states.push(State::default());

        let mut intern = |set: Vec<usize>,
                          states: &mut Vec<State>,
                          queue: &mut VecDeque<Vec<usize>>|
         -> Result<u32, CompileError> {
            if set.is_empty() {
                return Ok(DEAD);
            }
            if let Some(id) = ids.get(&set) {
                return Ok(*id);
            }
            if states.len() >= MAX_STATES {
                return Err(CompileError::TooComplex);
            }
            let id = states.len() as u32;
            states.push(State::default());
            ids.insert(set.clone(), id);
            queue.push_back(set);
            Ok(id)
        };

        let mut index = 0usize;
        while let Some(set) = queue.pop_front() {
            // Any segment at all leads here; a literal adds the nodes that name it.
            let mut default: BTreeSet<usize> = BTreeSet::new();
            let mut literals: BTreeSet<&[u8]> = BTreeSet::new();
            for &n in &set {
                let node = &self.nodes[n];
                default.extend(node.any);
                default.extend(node.rest);
                if node.looping {
                    default.insert(n);
                }
                literals.extend(node.lits.iter().map(|(l, _)| l.as_ref()));
            }
            let mut lits = Vec::with_capacity(literals.len());
            for lit in literals {
                let mut next = default.clone();
                for &n in &set {
                    if let Some((_, c)) = self.nodes[n].lits.iter().find(|(l, _)| l.as_ref() == lit)
                    {
                        next.insert(*c);
                    }
                }
                let id = intern(next.into_iter().collect(), &mut states, &mut queue)?;
                lits.push((Box::<[u8]>::from(lit), id));
            }
            let default = intern(default.into_iter().collect(), &mut states, &mut queue)?;
            // Literals that lead where any segment would are dropped: fewer to search.
            lits.retain(|(_, id)| *id != default);
            // Searched by length first: most comparisons then end without a byte compare.
            lits.sort_by(|(a, _), (b, _)| by_len_then_bytes(a, b));
            let accept = set
                .iter()
                .copied()
                .filter(|n| self.nodes[*n].accept.is_some())
                .min_by(|a, b| self.specificity(*a, *b))
                .and_then(|n| self.nodes[n].accept);
            // States are numbered in the order they are queued, so `index` is this set's id.
            states[index] = State {
                lits: lits.into_boxed_slice(),
                default,
                accept,
            };
            index += 1;
        }
        Ok(Matcher {
            states: states.into_boxed_slice(),
        })
    }
}

/// The order of a state's literals: by length, then bytes.
#[inline]
fn by_len_then_bytes(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[derive(Debug, Default)]
struct State {
    /// Sorted by [`by_len_then_bytes`], for binary search.
    lits: Box<[(Box<[u8]>, u32)]>,
    default: u32,
    accept: Option<NsId>,
}

/// Every namespace's patterns, compiled into one DFA over key segments.
#[derive(Debug)]
pub struct Matcher {
    states: Box<[State]>,
}

impl Default for Matcher {
    /// A matcher with no patterns: every well-formed key is [`KeyMatch::NoMatch`].
    fn default() -> Self {
        Matcher {
            states: vec![State {
                lits: Box::new([]),
                default: DEAD,
                accept: None,
            }]
            .into_boxed_slice(),
        }
    }
}

impl Matcher {
    /// The namespace of `key`. Allocation-free: one pass over the segments, one binary search
    /// per segment until no pattern can match, then only the empty-segment check continues.
    pub fn find(&self, key: &[u8]) -> KeyMatch {
        let mut state = 0u32;
        let mut start = 0;
        // Keys are a few dozen bytes: a plain loop beats a `memchr` call (and its setup) per
        // segment.
        for end in (0..=key.len()).filter(|&i| key.get(i).is_none_or(|&b| b == b':')) {
            let seg = key.get(start..end).unwrap_or_default();
            if seg.is_empty() {
                return KeyMatch::EmptySegment;
            }
            if state != DEAD {
                state = match self.states.get(state as usize) {
                    Some(s) => match s.lits.binary_search_by(|(l, _)| by_len_then_bytes(l, seg)) {
                        Ok(i) => s.lits[i].1,
                        Err(_) => s.default,
                    },
                    None => DEAD,
                };
            }
            start = end + 1;
        }
        match self.states.get(state as usize).and_then(|s| s.accept) {
            Some(ns) => KeyMatch::Namespace(ns),
            None => KeyMatch::NoMatch,
        }
    }

    /// Number of DFA states, for tests and logs.
    pub fn state_count(&self) -> usize {
        self.states.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(spec: &[(&str, NsId)]) -> Matcher {
        let mut b = Builder::new();
        for (p, ns) in spec {
            b.add(&parse(p).unwrap(), *ns).unwrap();
        }
        b.compile().unwrap()
    }

    #[test]
    fn parses_the_three_segment_kinds() {
        assert_eq!(
            parse("rate_limit:{action}:{id}").unwrap(),
            vec![
                Segment::Literal(b"rate_limit".as_slice().into()),
                Segment::Placeholder,
                Segment::Placeholder
            ]
        );
        assert_eq!(parse("temp:{rest...}").unwrap()[1], Segment::Rest);
    }

    #[test]
    fn refuses_bad_patterns_with_a_reason() {
        assert_eq!(parse(""), Err(PatternError::Empty));
        assert_eq!(parse("session:"), Err(PatternError::EmptySegment(2)));
        assert_eq!(parse("a::b"), Err(PatternError::EmptySegment(2)));
        assert!(matches!(parse("user{id}"), Err(PatternError::Mixed(_))));
        assert!(matches!(parse("user:{}"), Err(PatternError::BadName(_))));
        assert!(matches!(parse("user:{a b}"), Err(PatternError::BadName(_))));
        assert!(matches!(
            parse("a:{r...}:b"),
            Err(PatternError::RestNotLast(_))
        ));
        assert!(matches!(
            parse("user_profile:*"),
            Err(PatternError::Glob(_))
        ));
        let long = vec!["a"; MAX_SEGMENTS + 1].join(":");
        assert_eq!(parse(&long), Err(PatternError::TooLong));
        // The error text tells the operator what to write.
        let msg = parse("user{id}").unwrap_err().to_string();
        assert!(msg.contains("{id}"), "{msg}");
    }

    #[test]
    fn seed_examples() {
        let m = matcher(&[
            ("user_profile:{id}", 0),
            ("rate_limit:{action}:{id}:{window}", 1),
            ("session:{id}:{device}", 2),
            ("session:{id}", 2),
        ]);
        assert_eq!(m.find(b"user_profile:42"), KeyMatch::Namespace(0));
        assert_eq!(m.find(b"rate_limit:login:42:60"), KeyMatch::Namespace(1));
        assert_eq!(m.find(b"session:42:iphone"), KeyMatch::Namespace(2));
        assert_eq!(m.find(b"session:42"), KeyMatch::Namespace(2));
        assert_eq!(m.find(b"user123"), KeyMatch::NoMatch);
        assert_eq!(m.find(b"123_limit"), KeyMatch::NoMatch);
        assert_eq!(m.find(b"user_profile"), KeyMatch::NoMatch);
        assert_eq!(m.find(b"user_profile:42:extra"), KeyMatch::NoMatch);
        assert_eq!(m.find(b"session:"), KeyMatch::EmptySegment);
        assert_eq!(m.find(b":session"), KeyMatch::EmptySegment);
        assert_eq!(m.find(b"session::x"), KeyMatch::EmptySegment);
        assert_eq!(m.find(b""), KeyMatch::EmptySegment);
        // Literals are case-sensitive bytes.
        assert_eq!(m.find(b"SESSION:42"), KeyMatch::NoMatch);
    }

    #[test]
    fn most_specific_pattern_wins() {
        let m = matcher(&[
            ("session:{id}", 0),
            ("session:core:{id}", 1),
            ("x:{a}:lit", 2),
            ("x:lit:{b}", 3),
            ("temp:{rest...}", 4),
            ("temp:{kind}:{id}", 5),
            ("temp:upload:{rest...}", 6),
        ]);
        assert_eq!(m.find(b"session:core:7"), KeyMatch::Namespace(1));
        assert_eq!(m.find(b"session:core"), KeyMatch::Namespace(0));
        assert_eq!(m.find(b"session:7"), KeyMatch::Namespace(0));
        // Leftmost literal decides.
        assert_eq!(m.find(b"x:lit:lit"), KeyMatch::Namespace(3));
        assert_eq!(m.find(b"x:other:lit"), KeyMatch::Namespace(2));
        // A placeholder beats a remainder; a literal beats both.
        assert_eq!(m.find(b"temp:a:b"), KeyMatch::Namespace(5));
        assert_eq!(m.find(b"temp:a"), KeyMatch::Namespace(4));
        assert_eq!(m.find(b"temp:a:b:c:d"), KeyMatch::Namespace(4));
        assert_eq!(m.find(b"temp:upload:b"), KeyMatch::Namespace(6));
        assert_eq!(m.find(b"temp:upload:b:c"), KeyMatch::Namespace(6));
        assert_eq!(m.find(b"temp:upload"), KeyMatch::Namespace(4));
        assert_eq!(m.find(b"temp"), KeyMatch::NoMatch);
    }

    #[test]
    fn keys_are_bytes() {
        let m = matcher(&[("bin:{id}", 0), ("caf\u{e9}:{id}", 1)]);
        assert_eq!(m.find(b"bin:\xff\xfe\x00"), KeyMatch::Namespace(0));
        assert_eq!(m.find("café:1".as_bytes()), KeyMatch::Namespace(1));
        assert_eq!(m.find(b"\xff:1"), KeyMatch::NoMatch);
        assert_eq!(m.find(b"session:{42}"), KeyMatch::NoMatch);
        let m = matcher(&[("session:{id}", 0)]);
        assert_eq!(m.find(b"session:{42}"), KeyMatch::Namespace(0));
    }

    #[test]
    fn duplicates_are_refused_whatever_the_placeholder_names() {
        let mut b = Builder::new();
        b.add(&parse("session:{id}").unwrap(), 0).unwrap();
        assert_eq!(
            b.add(&parse("session:{user}").unwrap(), 1),
            Err(CompileError::Duplicate(0))
        );
        b.add(&parse("session:{id}:{d}").unwrap(), 1).unwrap();
    }

    #[test]
    fn empty_matcher_matches_nothing() {
        let m = Matcher::default();
        assert_eq!(m.find(b"a:b"), KeyMatch::NoMatch);
        assert_eq!(m.find(b"a:"), KeyMatch::EmptySegment);
        let m = Builder::new().compile().unwrap();
        assert_eq!(m.find(b"a"), KeyMatch::NoMatch);
    }

    #[test]
    fn agrees_with_a_naive_matcher() {
        // Brute force over small keys: the DFA must pick what a per-pattern loop would.
        let pats = [
            "a:{x}",
            "a:b",
            "{x}:b",
            "{x}:{y}:c",
            "a:{r...}",
            "{r...}",
            "b:{x}:{r...}",
            "a:b:{x}",
        ];
        let parsed: Vec<Vec<Segment>> = pats.iter().map(|p| parse(p).unwrap()).collect();
        let mut b = Builder::new();
        for (i, p) in parsed.iter().enumerate() {
            b.add(p, i as NsId).unwrap();
        }
        let m = b.compile().unwrap();
        let kinds = |p: &[Segment], n: usize| -> Option<Vec<Kind>> {
            // The kind sequence this pattern uses to match n segments, if it can.
            let mut out = Vec::new();
            for (i, s) in p.iter().enumerate() {
                match s {
                    Segment::Literal(_) => out.push(Kind::Literal),
                    Segment::Placeholder => out.push(Kind::Placeholder),
                    Segment::Rest => {
                        if n <= i {
                            return None;
                        }
                        out.extend(std::iter::repeat_n(Kind::Rest, n - i));
                        return Some(out);
                    }
                }
            }
            (out.len() == n).then_some(out)
        };
        let alphabet: [&[u8]; 3] = [b"a", b"b", b"c"];
        let mut keys: Vec<Vec<&[u8]>> = vec![vec![]];
        for _ in 0..4 {
            let mut next = Vec::new();
            for k in &keys {
                for a in alphabet {
                    let mut k2 = k.clone();
                    k2.push(a);
                    next.push(k2);
                }
            }
            for k in &next {
                let key = k.join(&b':');
                let naive = parsed
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        let n = k.len();
                        kinds(p, n).is_some()
                            && p.iter().enumerate().all(|(i, s)| match s {
                                Segment::Literal(l) => k.get(i) == Some(&l.as_ref()),
                                _ => true,
                            })
                    })
                    .min_by_key(|(_, p)| kinds(p, k.len()))
                    .map(|(i, _)| KeyMatch::Namespace(i as NsId))
                    .unwrap_or(KeyMatch::NoMatch);
                assert_eq!(m.find(&key), naive, "{}", String::from_utf8_lossy(&key));
            }
            keys = next;
        }
    }
}
