//! Property tests of path globs against the reference matcher the `glob` fuzz target also uses
//! (`fuzz/reference/glob.rs`): generated globs are accepted or refused as the reference says,
//! and match exactly the generated paths the reference matches.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/reference/glob.rs"]
mod reference;

use proptest::prelude::*;
use sluice::config::Glob;

/// Glob segments over a small alphabet, so that generated paths often match.
fn glob_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("**".to_string()),
        Just("*".to_string()),
        "[ab]{1,3}",
        "[ab*]{1,4}",
        "[ab]{0,2}\\*[ab]{0,2}",
        // Rarely: what the rules refuse (empty segments, `**` inside a segment, a query).
        Just(String::new()),
        Just("a**".to_string()),
        Just("a?b".to_string()),
    ]
}

fn glob_text() -> impl Strategy<Value = String> {
    (prop::collection::vec(glob_segment(), 0..6), any::<bool>())
        .prop_map(|(segs, trailing)| format!("/{}{}", segs.join("/"), if trailing { "/" } else { "" }))
}

fn path_text() -> impl Strategy<Value = String> {
    (prop::collection::vec("[ab]{0,3}", 0..7), any::<bool>(), prop_oneof![Just(""), Just("?q=a/b"), Just("#a")])
        .prop_map(|(segs, trailing, tail)| format!("/{}{}{tail}", segs.join("/"), if trailing { "/" } else { "" }))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn globs_are_accepted_as_the_rules_say(glob in glob_text()) {
        prop_assert_eq!(Glob::parse(&glob).is_ok(), reference::valid(&glob), "{}", glob);
    }

    #[test]
    fn globs_match_what_the_reference_matches(glob in glob_text(), paths in prop::collection::vec(path_text(), 8)) {
        if let Ok(g) = Glob::parse(&glob) {
            for path in &paths {
                prop_assert_eq!(g.matches(path), reference::matches(&glob, path), "{} vs {}", glob, path);
            }
        }
    }

    #[test]
    fn arbitrary_text_never_disagrees(glob in "/[ab*/?#]{0,12}", path in "[ab/?#]{0,12}") {
        match Glob::parse(&glob) {
            Ok(g) => {
                prop_assert!(reference::valid(&glob));
                prop_assert_eq!(g.matches(&path), reference::matches(&glob, &path), "{} vs {}", glob, path);
            }
            Err(_) => prop_assert!(!reference::valid(&glob)),
        }
    }
}
