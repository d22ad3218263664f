//! Subject rules: what a subject is, decided in one place.
//!
//! The configuration's `[[subjects]]` entries each name a pattern and what
//! subjects matching it get: how much history they keep (0: ephemeral,
//! e.g. typing indicators, which must never replay on resume), whether who
//! subscribes to them is tracked (presence) and announced (join/leave
//! events), and whether clients (user tokens, anonymous connections) may
//! publish there at all or only backends (API keys). The first rule whose
//! pattern matches a subject decides; a subject no rule matches gets the
//! `[broker.history]` defaults, no presence, and client publishing where
//! permissions allow it.

use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::history::{HistoryLimits, RingLimits};
use crate::subject::{Pattern, SubjectError, SubjectLimits, SYSTEM_PREFIX};

/// One `[[subjects]]` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectRuleConfig {
    pub pattern: String,
    /// Messages kept per subject; 0 keeps none. Default:
    /// `broker.history.max_messages_per_subject`.
    #[serde(default)]
    pub history_size: Option<usize>,
    /// How long messages are kept. Default: `broker.history.max_age`.
    #[serde(default, deserialize_with = "crate::units::duration::deserialize")]
    pub history_age: Option<Duration>,
    /// Track who is subscribed (users with a token).
    #[serde(default)]
    pub presence: bool,
    /// Announce joins and leaves on `$presence.<subject>`; default: as
    /// `presence`.
    #[serde(default)]
    pub join_leave: Option<bool>,
    /// Whether clients may publish here (where their permissions allow);
    /// `false`: only backends (API keys) may.
    #[serde(default = "yes")]
    pub client_publish: bool,
}

fn yes() -> bool {
    true
}

/// A rule that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    #[error("subjects[{index}].pattern {pattern:?}: {error}")]
    Pattern {
        index: usize,
        pattern: String,
        error: SubjectError,
    },
    #[error("subjects[{index}]: join_leave needs presence = true")]
    JoinLeaveWithoutPresence { index: usize },
}

/// What a subject gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectPolicy {
    pub history: RingLimits,
    pub presence: bool,
    pub join_leave: bool,
    pub client_publish: bool,
}

/// The configured rules, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectRules {
    rules: Vec<(Pattern, SubjectRuleConfig)>,
}

impl SubjectRules {
    pub fn from_config(
        configs: &[SubjectRuleConfig],
        limits: &SubjectLimits,
    ) -> Result<SubjectRules, RuleError> {
        let mut rules = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            let pattern = Pattern::parse(&config.pattern, limits).map_err(|error| RuleError::Pattern {
                index,
                pattern: config.pattern.clone(),
                error,
            })?;
            if config.join_leave == Some(true) && !config.presence {
                return Err(RuleError::JoinLeaveWithoutPresence { index });
            }
            rules.push((pattern, config.clone()));
        }
        Ok(SubjectRules { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The policy of `subject` (validated): the first matching rule's, or
    /// the defaults. System subjects (`$...`) are always ephemeral.
    pub fn policy(&self, subject: &str, defaults: &HistoryLimits) -> SubjectPolicy {
        if subject.starts_with(SYSTEM_PREFIX) {
            return SubjectPolicy {
                history: RingLimits {
                    max_messages: 0,
                    max_age: Duration::ZERO,
                },
                presence: false,
                join_leave: false,
                client_publish: false,
            };
        }
        let default_history = RingLimits::from(defaults);
        match self.rules.iter().find(|(pattern, _)| pattern.matches(subject)) {
            None => SubjectPolicy {
                history: default_history,
                presence: false,
                join_leave: false,
                client_publish: true,
            },
            Some((_, rule)) => SubjectPolicy {
                history: RingLimits {
                    max_messages: rule.history_size.unwrap_or(default_history.max_messages),
                    max_age: rule.history_age.unwrap_or(default_history.max_age),
                },
                presence: rule.presence,
                join_leave: rule.join_leave.unwrap_or(rule.presence),
                client_publish: rule.client_publish,
            },
        }
    }

    /// The most messages any subject keeps: what a log shared by a
    /// cluster must keep per subject.
    pub fn largest_size(&self, defaults: &HistoryLimits) -> usize {
        self.rules
            .iter()
            .filter_map(|(_, rule)| rule.history_size)
            .fold(defaults.max_messages_per_subject, usize::max)
    }

    /// The longest any subject keeps history: what a journal on disk must
    /// keep.
    pub fn longest_age(&self, defaults: &HistoryLimits) -> Duration {
        self.rules
            .iter()
            .filter_map(|(_, rule)| rule.history_age)
            .fold(defaults.max_age, Duration::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: &str) -> SubjectRuleConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_first_matching_rule_decides_and_defaults_apply_elsewhere() {
        let rules = SubjectRules::from_config(
            &[
                rule(r#"{"pattern":"chat.*.typing","history_size":0,"client_publish":true}"#),
                rule(r#"{"pattern":"chat.>","presence":true,"history_age":"1h"}"#),
                rule(r#"{"pattern":"news.>","client_publish":false}"#),
            ],
            &SubjectLimits::default(),
        )
        .unwrap();
        let defaults = HistoryLimits::default();
        let typing = rules.policy("chat.room1.typing", &defaults);
        assert!(!typing.history.keeps_history() && !typing.presence);
        let room = rules.policy("chat.room1", &defaults);
        assert!(room.presence && room.join_leave && room.client_publish);
        assert_eq!(room.history.max_age, Duration::from_secs(3600));
        assert_eq!(room.history.max_messages, defaults.max_messages_per_subject);
        assert!(!rules.policy("news.a", &defaults).client_publish);
        let other = rules.policy("other", &defaults);
        assert_eq!(other.history, RingLimits::from(&defaults));
        assert!(!other.presence && other.client_publish);
        assert!(!rules
            .policy("$presence.chat.room1", &defaults)
            .history
            .keeps_history());
        assert_eq!(rules.longest_age(&defaults), Duration::from_secs(3600));
    }

    #[test]
    fn bad_rules_are_refused() {
        let limits = SubjectLimits::default();
        let bad_pattern = SubjectRules::from_config(&[rule(r#"{"pattern":"a..b"}"#)], &limits);
        assert!(matches!(bad_pattern, Err(RuleError::Pattern { index: 0, .. })));
        let join_leave = SubjectRules::from_config(&[rule(r#"{"pattern":"a","join_leave":true}"#)], &limits);
        assert_eq!(join_leave, Err(RuleError::JoinLeaveWithoutPresence { index: 0 }));
    }
}
