//! The words of a caption, in place of the COCO evaluation's PTBTokenizer (a Java program).

/// The words of `text`: lower-cased (Unicode), split on whitespace, each piece trimmed of the
/// characters at its ends that are neither letters nor digits (punctuation, quotes, dashes,
/// symbols), and pieces left empty dropped. Characters inside a word stay, so "man's",
/// "hot-dog" and "3.5" are one word each.
///
/// It differs from the PTB tokenizer the COCO evaluation runs mainly in keeping clitics on
/// their word ("man's", where PTB gives "man" "'s") and in not splitting words that
/// punctuation joins without a space ("end.the").
///
/// ```
/// use fused_rnn::eval::tokenize;
/// assert_eq!(tokenize("A man's \"hot-dog\" stand, 3.5 m!"), ["a", "man's", "hot-dog", "stand", "3.5", "m"]);
/// ```
pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split_whitespace()
        .map(|piece| piece.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|word| !word.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_cases_splits_and_trims_punctuation() {
        assert_eq!(
            tokenize("A man riding a WAVE on top of a surfboard."),
            [
                "a",
                "man",
                "riding",
                "a",
                "wave",
                "on",
                "top",
                "of",
                "a",
                "surfboard"
            ]
        );
        assert_eq!(
            tokenize("  Two\tdogs,\n playing!!  "),
            ["two", "dogs", "playing"]
        );
        assert_eq!(
            tokenize("(A) -- «Café» ... ÉCOLE 'n' ok?"),
            ["a", "café", "école", "n", "ok"]
        );
    }

    #[test]
    fn keeps_inner_punctuation() {
        assert_eq!(
            tokenize("The man's hot-dog costs $3.50."),
            ["the", "man's", "hot-dog", "costs", "3.50"]
        );
    }

    #[test]
    fn nothing_but_punctuation_gives_no_words() {
        assert!(tokenize("").is_empty());
        assert!(tokenize(" ... -- !? ").is_empty());
    }
}
