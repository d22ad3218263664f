//! Property test: the router agrees with a naive matcher on random
//! subjects, patterns and subscribe/unsubscribe sequences.

use std::collections::BTreeSet;

use herald_broker::router::Router;
use herald_broker::{Pattern, SubjectLimits};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Subscribe(String, u32),
    Unsubscribe(String, u32),
    Match(String),
}

fn subject() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..5).prop_map(|tokens| tokens.join("."))
}

fn pattern() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "*"]), 0..4),
        prop::sample::select(vec!["a", "c", "*", ">"]),
    )
        .prop_map(|(mut tokens, last)| {
            tokens.push(last);
            tokens.join(".")
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (pattern(), 0..6u32).prop_map(|(p, id)| Op::Subscribe(p, id)),
        1 => (pattern(), 0..6u32).prop_map(|(p, id)| Op::Unsubscribe(p, id)),
        3 => subject().prop_map(Op::Match),
    ]
}

/// The definition, written as plainly as possible.
fn naive_matches(pattern: &[&str], subject: &[&str]) -> bool {
    match (pattern.split_first(), subject.split_first()) {
        (None, None) => true,
        (Some((&">", _)), Some(_)) => true,
        (Some((&"*", pattern_rest)), Some((_, subject_rest))) => naive_matches(pattern_rest, subject_rest),
        (Some((literal, pattern_rest)), Some((token, subject_rest))) => {
            literal == token && naive_matches(pattern_rest, subject_rest)
        }
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn router_agrees_with_naive_matcher(ops in prop::collection::vec(op(), 1..80)) {
        let limits = SubjectLimits::default();
        let router: Router<u32> = Router::new();
        let mut model: BTreeSet<(String, u32)> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Subscribe(text, id) => {
                    let added = router.subscribe(&Pattern::parse(&text, &limits).unwrap(), id);
                    prop_assert_eq!(added, model.insert((text, id)));
                }
                Op::Unsubscribe(text, id) => {
                    let removed = router.unsubscribe(&Pattern::parse(&text, &limits).unwrap(), &id);
                    prop_assert_eq!(removed, model.remove(&(text, id)));
                }
                Op::Match(subject) => {
                    let subject_tokens: Vec<&str> = subject.split('.').collect();
                    let expected: BTreeSet<u32> = model
                        .iter()
                        .filter(|(p, _)| naive_matches(&p.split('.').collect::<Vec<_>>(), &subject_tokens))
                        .map(|(_, id)| *id)
                        .collect();
                    let mut found: Vec<u32> = router.matches(&subject).iter().flat_map(|l| l.iter().copied()).collect();
                    let unique: BTreeSet<u32> = found.iter().copied().collect();
                    prop_assert_eq!(&unique, &expected, "subject {}", subject);
                    // A subscriber appears once per matching pattern it holds.
                    found.sort_unstable();
                    let pairs = model.iter().filter(|(p, _)| naive_matches(&p.split('.').collect::<Vec<_>>(), &subject_tokens)).count();
                    prop_assert_eq!(found.len(), pairs);
                }
            }
            prop_assert_eq!(router.subscription_count(), model.len());
        }
    }
}
