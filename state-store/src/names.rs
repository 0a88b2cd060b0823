//! Readable tunnel names, `<mood>-<color>-<animal>` (pipe2me's style): 64 x 32 x 64 =
//! 131,072 combinations. [`readable_name`] retries until `taken` says no, then falls back to
//! a numbered form, so it never returns a name in use.

const MOODS: [&str; 64] = [
    "able", "agile", "amused", "bold", "brave", "bright", "brisk", "calm", "cheery", "chill",
    "clever", "cosy", "curious", "daring", "deft", "eager", "earnest", "easy", "fair", "fancy",
    "fond", "frank", "gentle", "giddy", "glad", "grand", "happy", "hardy", "hearty", "honest",
    "humble", "jolly", "keen", "kind", "lively", "loyal", "lucky", "merry", "mellow", "mighty",
    "modest", "neat", "nimble", "noble", "patient", "peppy", "plucky", "polite", "proud", "quick",
    "quiet", "ready", "serene", "sharp", "shy", "sleepy", "smart", "snug", "steady", "sunny",
    "swift", "tidy", "warm", "witty",
];

const COLORS: [&str; 32] = [
    "amber", "aqua", "azure", "beige", "black", "blue", "bronze", "brown", "coral", "crimson",
    "cyan", "gold", "gray", "green", "indigo", "ivory", "jade", "lemon", "lilac", "lime",
    "magenta", "maroon", "mint", "navy", "olive", "orange", "pink", "plum", "red", "silver",
    "teal", "violet",
];

const ANIMALS: [&str; 64] = [
    "alpaca", "badger", "beaver", "bison", "bobcat", "camel", "cobra", "condor", "corgi", "coyote",
    "crane", "dingo", "dolphin", "donkey", "eagle", "egret", "falcon", "ferret", "finch", "fox",
    "gecko", "gibbon", "gopher", "heron", "hippo", "ibis", "iguana", "jackal", "koala", "lemur",
    "lion", "llama", "lynx", "marmot", "mole", "moose", "narwhal", "newt", "ocelot", "orca",
    "otter", "owl", "panda", "parrot", "pelican", "puffin", "quail", "rabbit", "raven", "seal",
    "shrew", "sloth", "stoat", "swan", "tapir", "tiger", "toucan", "turtle", "walrus", "weasel",
    "whale", "wombat", "yak", "zebra",
];

/// How many distinct names [`readable_name`] draws from before numbering.
pub const COMBINATIONS: usize = MOODS.len() * COLORS.len() * ANIMALS.len();

fn draw() -> String {
    let b = tunneld_core::auth::random_bytes::<6>();
    let pick = |hi: u8, lo: u8, n: usize| (usize::from(hi) << 8 | usize::from(lo)) % n;
    format!(
        "{}-{}-{}",
        MOODS[pick(b[0], b[1], MOODS.len())],
        COLORS[pick(b[2], b[3], COLORS.len())],
        ANIMALS[pick(b[4], b[5], ANIMALS.len())]
    )
}

/// A readable name for which `taken` is false.
pub fn readable_name(mut taken: impl FnMut(&str) -> bool) -> String {
    for _ in 0..64 {
        let n = draw();
        if !taken(&n) {
            return n;
        }
    }
    // The space is nearly full: number the names instead.
    let base = draw();
    (2u64..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken(n))
        .unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_dns_labels_and_collision_free() {
        assert_eq!(COMBINATIONS, 131_072);
        let all: HashSet<&str> = MOODS
            .iter()
            .chain(&COLORS)
            .chain(&ANIMALS)
            .copied()
            .collect();
        assert_eq!(all.len(), 64 + 32 + 64, "no word repeats");
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let n = readable_name(|n| seen.contains(n));
            assert!(n.len() <= 30 && n.split('-').count() == 3, "{n}");
            assert!(n.bytes().all(|c| c.is_ascii_lowercase() || c == b'-'));
            assert!(seen.insert(n));
        }
        let n = readable_name(|n| n.split('-').count() == 3);
        assert_eq!(n.split('-').count(), 4, "numbered fallback: {n}");
    }
}
