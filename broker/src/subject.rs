//! Subjects and patterns, validated once at the edge.
//!
//! A [`Subject`] names where a message is published (`chat.room42.typing`); a
//! [`Pattern`] names what a subscriber wants and may contain wildcards: `*`
//! matches exactly one token and `>` matches one or more trailing tokens. The
//! rules are NATS's, made a little stricter so that every rejection is
//! unambiguous:
//!
//! - tokens are separated by `.` and are never empty;
//! - no whitespace, control or invisible format characters (Unicode Cf:
//!   zero-width spaces, bidirectional overrides) anywhere;
//! - `*` and `>` are wildcards only as a whole token (`a*b` is rejected rather
//!   than silently treated as a literal), `>` only as the last token, and
//!   neither in a subject one publishes to;
//! - a leading `$` marks the system namespace (presence events and the like):
//!   clients can neither publish nor subscribe there.
//!
//! Once parsed, the validated value is carried around; nothing re-validates.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// Separator between tokens.
pub const TOKEN_SEPARATOR: char = '.';
/// Wildcard for exactly one token.
pub const SINGLE_WILDCARD: &str = "*";
/// Wildcard for one or more trailing tokens.
pub const FULL_WILDCARD: &str = ">";

/// Whether `text`, read as a pattern, names wildcards. In a valid pattern
/// `*` and `>` only ever stand alone as tokens, so their presence is enough
/// to decide cheaply, before parsing (an invalid pattern is refused where
/// it is parsed).
pub fn names_wildcards(text: &str) -> bool {
    text.contains(['*', '>'])
}
/// First character of the subjects reserved for the system.
pub const SYSTEM_PREFIX: char = '$';
/// Where the join and leave events of subject `s` are published:
/// `$presence.s`.
pub const PRESENCE_PREFIX: &str = "$presence.";
/// Where the server publishes what operators watch (`$sys.stats`): only
/// operator access (the admin key) may subscribe.
pub const OPERATOR_PREFIX: &str = "$sys.";

/// Limits applied when parsing subjects and patterns from clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectLimits {
    /// Longest accepted subject or pattern, in bytes.
    pub max_length: usize,
    /// Most tokens accepted in a subject or pattern.
    pub max_tokens: usize,
}

impl Default for SubjectLimits {
    fn default() -> Self {
        Self {
            max_length: 256,
            max_tokens: 16,
        }
    }
}

/// Why a subject or pattern was rejected. Token indexes count from 0.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubjectError {
    #[error("subject is empty")]
    Empty,
    #[error("subject is {length} bytes long; the limit is {max}")]
    TooLong { length: usize, max: usize },
    #[error("subject has {count} tokens; the limit is {max}")]
    TooManyTokens { count: usize, max: usize },
    #[error("token {index} is empty (leading, trailing or doubled '.')")]
    EmptyToken { index: usize },
    #[error(
        "token {index} contains {found:?}: whitespace, control and invisible formatting characters are not allowed"
    )]
    InvalidCharacter { index: usize, found: char },
    #[error("token {index} mixes a wildcard with other characters: '*' and '>' must stand alone")]
    PartialWildcard { index: usize },
    #[error("token {index} is '>', which may only be the last token")]
    FullWildcardNotLast { index: usize },
    #[error("token {index} is a wildcard, but a subject to publish to must be concrete")]
    WildcardInSubject { index: usize },
    #[error("subjects starting with '$' are reserved for the system")]
    Reserved,
}

impl SubjectError {
    /// Stable snake_case code for client-facing errors.
    pub fn code(&self) -> &'static str {
        match self {
            SubjectError::TooLong { .. } | SubjectError::TooManyTokens { .. } => "subject_too_long",
            SubjectError::Reserved => "reserved_subject",
            _ => "invalid_subject",
        }
    }
}

/// A concrete subject: no wildcards. Cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(Arc<str>);

/// A subscription pattern: a subject that may contain `*` and `>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern {
    text: Arc<str>,
    has_wildcards: bool,
}

impl Subject {
    /// Parses a subject a client wants to publish to.
    pub fn parse(text: &str, limits: &SubjectLimits) -> Result<Subject, SubjectError> {
        validate_subject(text, limits)?;
        Ok(Subject(Arc::from(text)))
    }

    /// Parses a subject in the system namespace; it must start with `$`.
    pub fn parse_system(text: &str, limits: &SubjectLimits) -> Result<Subject, SubjectError> {
        let shape = check_tokens(text, limits)?;
        if !text.starts_with(SYSTEM_PREFIX) {
            return Err(SubjectError::InvalidCharacter {
                index: 0,
                found: text.chars().next().unwrap_or(' '),
            });
        }
        if let Some(index) = shape.first_wildcard {
            return Err(SubjectError::WildcardInSubject { index });
        }
        Ok(Subject(Arc::from(text)))
    }

    /// Wraps text that [`validate_subject`] has already accepted.
    pub(crate) fn from_validated(text: &str) -> Subject {
        Subject(Arc::from(text))
    }

    /// Where the presence events of this subject are published.
    pub(crate) fn presence_events(&self) -> Subject {
        Subject(Arc::from(format!("{PRESENCE_PREFIX}{}", self.0)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Iterates over the tokens without allocating.
    pub fn tokens(&self) -> Tokens<'_> {
        Tokens::of(&self.0)
    }

    pub fn is_system(&self) -> bool {
        self.0.starts_with(SYSTEM_PREFIX)
    }
}

impl Pattern {
    /// Parses a pattern a client wants to subscribe to.
    pub fn parse(text: &str, limits: &SubjectLimits) -> Result<Pattern, SubjectError> {
        let shape = check_tokens(text, limits)?;
        if text.starts_with(SYSTEM_PREFIX) {
            return Err(SubjectError::Reserved);
        }
        Ok(Pattern {
            text: Arc::from(text),
            has_wildcards: shape.first_wildcard.is_some(),
        })
    }

    /// Parses a pattern under [`OPERATOR_PREFIX`] (`$sys.>`), which
    /// [`Pattern::parse`] refuses as reserved.
    pub fn parse_operator(text: &str, limits: &SubjectLimits) -> Result<Pattern, SubjectError> {
        let rest = text.strip_prefix(OPERATOR_PREFIX).ok_or(SubjectError::Reserved)?;
        let shape = check_tokens(rest, limits)?;
        Ok(Pattern {
            text: Arc::from(text),
            has_wildcards: shape.first_wildcard.is_some(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The pattern of the presence events of every subject this one
    /// matches: `$presence.<pattern>`. Only the broker subscribes to it, on
    /// behalf of a client allowed to subscribe to `self`.
    pub fn presence_events(&self) -> Pattern {
        Pattern {
            text: Arc::from(format!("{PRESENCE_PREFIX}{}", self.text)),
            has_wildcards: self.has_wildcards,
        }
    }

    /// Whether this is a system pattern (`$...`), which only the broker
    /// subscribes to on a client's behalf.
    pub fn is_system(&self) -> bool {
        self.text.starts_with(SYSTEM_PREFIX)
    }

    /// True when the pattern contains `*` or `>`; a pattern without them
    /// matches exactly one subject.
    pub fn has_wildcards(&self) -> bool {
        self.has_wildcards
    }

    pub fn tokens(&self) -> Tokens<'_> {
        Tokens::of(&self.text)
    }

    /// Whether `subject` is matched by this pattern. Allocation-free; the
    /// router uses its index instead, this is for scans (history) and tests.
    pub fn matches(&self, subject: &str) -> bool {
        if !self.has_wildcards {
            return &*self.text == subject;
        }
        let mut subject_tokens = Tokens::of(subject);
        for pattern_token in self.tokens() {
            match pattern_token {
                FULL_WILDCARD => return subject_tokens.next().is_some(),
                SINGLE_WILDCARD => {
                    if subject_tokens.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if subject_tokens.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        subject_tokens.next().is_none()
    }
}

/// The tokens of a subject or pattern, split at each `.` (as
/// `str::split` would, by a plain byte search: the publish path splits
/// every subject it routes or checks against a pattern).
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    rest: Option<&'a str>,
}

impl<'a> Tokens<'a> {
    pub fn of(text: &'a str) -> Tokens<'a> {
        Tokens { rest: Some(text) }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.bytes().position(|byte| byte == b'.') {
            Some(at) => {
                self.rest = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Checks a client subject without allocating: the publish path validates
/// this way and only allocates when the subject is new to the broker.
pub fn validate_subject(text: &str, limits: &SubjectLimits) -> Result<(), SubjectError> {
    let shape = check_tokens(text, limits)?;
    if text.starts_with(SYSTEM_PREFIX) {
        return Err(SubjectError::Reserved);
    }
    match shape.first_wildcard {
        Some(index) => Err(SubjectError::WildcardInSubject { index }),
        None => Ok(()),
    }
}

struct Shape {
    first_wildcard: Option<usize>,
}

/// The rules shared by subjects and patterns.
/// Whether `c` may appear in a subject token: not whitespace, not a control
/// character, and not an invisible Unicode format character (category Cf:
/// zero-width spaces and joiners, bidirectional overrides, the BOM), which
/// would let two subjects look the same and differ.
fn is_allowed_in_subject(c: char) -> bool {
    if c.is_ascii() {
        return !c.is_ascii_whitespace() && !c.is_ascii_control();
    }
    !c.is_whitespace() && !c.is_control() && !is_format_character(c)
}

/// Unicode general category Cf (format characters), Unicode 15.
fn is_format_character(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

fn check_tokens(text: &str, limits: &SubjectLimits) -> Result<Shape, SubjectError> {
    if text.is_empty() {
        return Err(SubjectError::Empty);
    }
    if text.len() > limits.max_length {
        return Err(SubjectError::TooLong {
            length: text.len(),
            max: limits.max_length,
        });
    }
    // Every publish checks its subject: one pass over the bytes of each
    // token, and the character rules only for a token that is not ASCII.
    let mut first_wildcard = None;
    let mut count = 0;
    let mut rest = Some(text);
    while let Some(remaining) = rest {
        let index = count;
        count += 1;
        let token = match remaining.bytes().position(|byte| byte == b'.') {
            Some(at) => {
                rest = Some(&remaining[at + 1..]);
                &remaining[..at]
            }
            None => {
                rest = None;
                remaining
            }
        };
        if token.is_empty() {
            return Err(SubjectError::EmptyToken { index });
        }
        let mut wildcard_byte = false;
        if token.is_ascii() {
            for &byte in token.as_bytes() {
                // ASCII whitespace and control characters: 0x00-0x20, 0x7f.
                if byte <= b' ' || byte == 0x7f {
                    return Err(SubjectError::InvalidCharacter {
                        index,
                        found: byte as char,
                    });
                }
                wildcard_byte |= byte == b'*' || byte == b'>';
            }
        } else {
            if let Some(found) = token.chars().find(|&c| !is_allowed_in_subject(c)) {
                return Err(SubjectError::InvalidCharacter { index, found });
            }
            wildcard_byte = token.contains(['*', '>']);
        }
        if !wildcard_byte {
            continue;
        }
        match token {
            SINGLE_WILDCARD => {
                first_wildcard.get_or_insert(index);
            }
            FULL_WILDCARD => {
                if rest.is_some() {
                    return Err(SubjectError::FullWildcardNotLast { index });
                }
                first_wildcard.get_or_insert(index);
            }
            _ => return Err(SubjectError::PartialWildcard { index }),
        }
    }
    if count > limits.max_tokens {
        return Err(SubjectError::TooManyTokens {
            count,
            max: limits.max_tokens,
        });
    }
    Ok(Shape { first_wildcard })
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subject({:?})", &*self.0)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.text)
    }
}

impl std::borrow::Borrow<str> for Subject {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<Subject> for Pattern {
    fn from(subject: Subject) -> Pattern {
        Pattern {
            text: subject.0,
            has_wildcards: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules as first written (a char-wise split): the byte-level
    /// [`check_tokens`] must decide every input the same way.
    fn reference_check_tokens(text: &str, limits: &SubjectLimits) -> Result<Shape, SubjectError> {
        if text.is_empty() {
            return Err(SubjectError::Empty);
        }
        if text.len() > limits.max_length {
            return Err(SubjectError::TooLong {
                length: text.len(),
                max: limits.max_length,
            });
        }
        let mut first_wildcard = None;
        let mut count = 0;
        let mut tokens = text.split(TOKEN_SEPARATOR).enumerate().peekable();
        while let Some((index, token)) = tokens.next() {
            count += 1;
            if token.is_empty() {
                return Err(SubjectError::EmptyToken { index });
            }
            if let Some(found) = token.chars().find(|&c| !is_allowed_in_subject(c)) {
                return Err(SubjectError::InvalidCharacter { index, found });
            }
            match token {
                SINGLE_WILDCARD => {
                    first_wildcard.get_or_insert(index);
                }
                FULL_WILDCARD => {
                    if tokens.peek().is_some() {
                        return Err(SubjectError::FullWildcardNotLast { index });
                    }
                    first_wildcard.get_or_insert(index);
                }
                _ if token.contains(['*', '>']) => return Err(SubjectError::PartialWildcard { index }),
                _ => {}
            }
        }
        if count > limits.max_tokens {
            return Err(SubjectError::TooManyTokens {
                count,
                max: limits.max_tokens,
            });
        }
        Ok(Shape { first_wildcard })
    }

    fn limits() -> SubjectLimits {
        SubjectLimits {
            max_length: 32,
            max_tokens: 4,
        }
    }

    proptest::proptest! {
        /// Random strings over the characters the rules care about (the
        /// separator, wildcards, whitespace, controls, an invisible format
        /// character, other non-ASCII letters) get the same verdict from
        /// both.
        #[test]
        fn the_byte_level_check_agrees_with_the_reference(
            text in "[a.*>\\t \\x00\\x7f\\u{200B}\\u{00E9}\\u{3000}b]{0,12}",
            max_tokens in 1usize..6,
        ) {
            let limits = SubjectLimits { max_length: 24, max_tokens };
            let fast = check_tokens(&text, &limits).map(|shape| shape.first_wildcard);
            let reference = reference_check_tokens(&text, &limits).map(|shape| shape.first_wildcard);
            proptest::prop_assert_eq!(fast, reference);
        }

        #[test]
        fn tokens_split_as_str_split_does(text in "[a.é]{0,10}") {
            let tokens: Vec<&str> = Tokens::of(&text).collect();
            let split: Vec<&str> = text.split('.').collect();
            proptest::prop_assert_eq!(tokens, split);
        }
    }

    #[test]
    fn subject_rules() {
        use SubjectError::*;
        let cases: &[(&str, Result<(), SubjectError>)] = &[
            ("chat", Ok(())),
            ("chat.room42.typing", Ok(())),
            ("a.b.c.d", Ok(())),
            ("ü.日本", Ok(())),
            ("", Err(Empty)),
            (".chat", Err(EmptyToken { index: 0 })),
            ("chat.", Err(EmptyToken { index: 1 })),
            ("chat..room", Err(EmptyToken { index: 1 })),
            ("chat.ro om", Err(InvalidCharacter { index: 1, found: ' ' })),
            (
                "chat\t",
                Err(InvalidCharacter {
                    index: 0,
                    found: '\t',
                }),
            ),
            (
                "chat.\u{7}",
                Err(InvalidCharacter {
                    index: 1,
                    found: '\u{7}',
                }),
            ),
            (
                "chat.\u{a0}x",
                Err(InvalidCharacter {
                    index: 1,
                    found: '\u{a0}',
                }),
            ),
            // Look-alikes: a zero-width space, a right-to-left override.
            (
                "chat.ro\u{200B}om",
                Err(InvalidCharacter {
                    index: 1,
                    found: '\u{200B}',
                }),
            ),
            (
                "chat.\u{202E}moor",
                Err(InvalidCharacter {
                    index: 1,
                    found: '\u{202E}',
                }),
            ),
            (
                "\u{FEFF}chat",
                Err(InvalidCharacter {
                    index: 0,
                    found: '\u{FEFF}',
                }),
            ),
            ("chat.*", Err(WildcardInSubject { index: 1 })),
            ("chat.>", Err(WildcardInSubject { index: 1 })),
            ("*.>", Err(WildcardInSubject { index: 0 })),
            ("chat.a*", Err(PartialWildcard { index: 1 })),
            ("chat.>b", Err(PartialWildcard { index: 1 })),
            ("$SYS.x", Err(Reserved)),
            ("a.b.c.d.e", Err(TooManyTokens { count: 5, max: 4 })),
            ("a".repeat(33).leak(), Err(TooLong { length: 33, max: 32 })),
        ];
        for (text, expected) in cases {
            let got = validate_subject(text, &limits());
            assert_eq!(&got, expected, "subject {text:?}");
            assert_eq!(Subject::parse(text, &limits()).map(|_| ()), got, "parse {text:?}");
        }
    }

    #[test]
    fn pattern_rules() {
        use SubjectError::*;
        let cases: &[(&str, Result<bool, SubjectError>)] = &[
            ("chat.room", Ok(false)),
            ("chat.*", Ok(true)),
            ("chat.>", Ok(true)),
            ("*", Ok(true)),
            (">", Ok(true)),
            ("*.*.>", Ok(true)),
            ("chat.>.x", Err(FullWildcardNotLast { index: 1 })),
            (">.>", Err(FullWildcardNotLast { index: 0 })),
            ("chat.**", Err(PartialWildcard { index: 1 })),
            ("chat.a>", Err(PartialWildcard { index: 1 })),
            ("chat..*", Err(EmptyToken { index: 1 })),
            ("chat.* ", Err(InvalidCharacter { index: 1, found: ' ' })),
            ("$SYS.>", Err(Reserved)),
            ("", Err(Empty)),
            ("*.*.*.*.*", Err(TooManyTokens { count: 5, max: 4 })),
        ];
        for (text, expected) in cases {
            let got = Pattern::parse(text, &limits()).map(|p| p.has_wildcards());
            assert_eq!(&got, expected, "pattern {text:?}");
        }
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("chat.a", "chat.a", true),
            ("chat.a", "chat.b", false),
            ("chat.*", "chat.a", true),
            ("chat.*", "chat", false),
            ("chat.*", "chat.a.b", false),
            ("chat.>", "chat.a", true),
            ("chat.>", "chat.a.b.c", true),
            ("chat.>", "chat", false),
            ("*.a", "x.a", true),
            ("*.a", "x.b", false),
            (">", "anything.at.all", true),
            ("*.*", "a.b", true),
            ("*.*", "a", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
        ];
        for (pattern, subject, expected) in cases {
            let pattern = Pattern::parse(pattern, &limits()).unwrap();
            assert_eq!(pattern.matches(subject), *expected, "{pattern} ~ {subject}");
        }
    }

    #[test]
    fn system_subjects() {
        let subject = Subject::parse_system("$presence.chat.a", &limits()).unwrap();
        assert!(subject.is_system());
        assert_eq!(
            Subject::parse_system("$presence.*", &limits()),
            Err(SubjectError::WildcardInSubject { index: 1 })
        );
        assert!(Subject::parse_system("presence", &limits()).is_err());
    }

    #[test]
    fn codes_are_stable() {
        assert_eq!(SubjectError::Reserved.code(), "reserved_subject");
        assert_eq!(
            SubjectError::TooLong { length: 1, max: 0 }.code(),
            "subject_too_long"
        );
        assert_eq!(SubjectError::EmptyToken { index: 0 }.code(), "invalid_subject");
    }
}
