//! Free text that the log records (reasons, messages, names from webhook
//! payloads) and that terminals print: which characters it may hold, and how
//! the CLI prints what it must not.
//!
//! The rule: recorded free text holds no control character but tab, no
//! Unicode line or paragraph separator, and no bidirectional formatting
//! character. A newline in a reason could print as a forged row of
//! `cairn history`; an ANSI escape could rewrite the terminal; a
//! right-to-left override could make a row read backwards. Text that Cairn
//! takes from a request is refused at the door when it breaks the rule
//! ([`check_text`]). Text a webhook delivery carries in a payload that
//! cannot be refused for it (a GitHub push, an Alertmanager notification) is
//! recorded escaped ([`escape_for_record`]). Whatever is stored, the CLI
//! prints such characters escaped ([`printable`]).

use std::borrow::Cow;

/// Whether `c` may appear in recorded free text.
pub fn is_allowed_in_text(c: char) -> bool {
    c == '\t' || !(c.is_control() || is_separator_or_bidi(c))
}

fn is_separator_or_bidi(c: char) -> bool {
    matches!(c,
        '\u{2028}' | '\u{2029}' // line and paragraph separators
        | '\u{200E}' | '\u{200F}' | '\u{061C}' // directional marks
        | '\u{202A}'..='\u{202E}' // embeddings and overrides
        | '\u{2066}'..='\u{2069}' // isolates
    )
}

/// Checks free text against the rule: the error names the first character
/// that breaks it and its byte offset.
pub fn check_text(text: &str) -> Result<(), String> {
    match text.char_indices().find(|(_, c)| !is_allowed_in_text(*c)) {
        None => Ok(()),
        Some((offset, c)) => Err(format!(
            "holds the control character U+{:04X} at byte {offset} (only printable text and tabs)",
            u32::from(c)
        )),
    }
}

/// `text` as a terminal should show it: every character the rule forbids,
/// and tab, escaped (`\n`, `\r`, `\t`, `\e`, else `\u{…}`), so that one
/// value stays on one line and in one column.
pub fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().all(|c| c != '\t' && is_allowed_in_text(c)) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            '\u{1b}' => escaped.push_str("\\e"),
            c if is_allowed_in_text(c) => escaped.push(c),
            c => escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    Cow::Owned(escaped)
}

/// Makes `text` follow the rule by escaping, as [`printable`] does: for text
/// Cairn records from a payload it cannot refuse for it (a GitHub push's
/// pusher, refs and file names, an Alertmanager receiver, git's and the
/// planner's messages about them). The delivery is authenticated and its
/// actions are wanted; only the text is made safe.
pub fn escape_for_record(text: &mut String) {
    if let Cow::Owned(escaped) = printable(text) {
        *text = escaped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_with_a_control_character_is_refused_naming_it() {
        assert_eq!(check_text("more capacity\tfor launch, été"), Ok(()));
        assert_eq!(
            check_text("ok\nroot ClusterDeleted"),
            Err(
                "holds the control character U+000A at byte 2 (only printable text and tabs)"
                    .into()
            )
        );
        assert!(check_text("\u{1b}[2K").is_err());
        assert!(check_text("a\u{7f}").is_err());
        assert!(check_text("a\u{85}").is_err());
        assert!(check_text("abc\u{202e}fed").is_err());
        assert!(check_text("a\u{2028}b").is_err());
    }

    #[test]
    fn printable_text_keeps_a_value_on_one_line() {
        assert_eq!(printable("plain, été"), "plain, été");
        assert_eq!(
            printable("ok\n  42  root  ClusterDeleted\u{1b}[0m\t\u{202e}"),
            "ok\\n  42  root  ClusterDeleted\\e[0m\\t\\u{202e}"
        );
        // Whatever the input, the output has no character the rule forbids.
        for c in ['\0', '\u{7f}', '\u{9b}', '\u{2029}', '\u{2066}'] {
            let text = format!("a{c}b");
            assert!(printable(&text)
                .chars()
                .all(|c| c != '\t' && is_allowed_in_text(c)));
        }
    }
}
