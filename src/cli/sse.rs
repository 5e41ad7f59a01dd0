//! A Server-Sent Events parser (the `text/event-stream` format of the HTML
//! standard), fed with the body's chunks as they arrive.
//!
//! Lines end with `\n`, `\r\n` or `\r`, even when a chunk splits them. A line
//! starting with `:` is a comment; `field: value` lines set `data` (repeated
//! lines join with `\n`), `event` and `id` (an id with a NUL is ignored); a
//! blank line dispatches the message. A message without data is not
//! dispatched, but its `id` still becomes the last event id: that is how a
//! stream tells a client where it resumes before any event arrives.

/// What one chunk of input completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    Message(SseMessage),
    /// A comment line without its `:` (a heartbeat, for Cairn).
    Comment(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// The last event id when the message was dispatched.
    pub id: Option<String>,
    /// The `event` field; `message` when absent.
    pub event: String,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` that starts this one belongs to it.
    after_cr: bool,
    data: String,
    event: String,
    id_buffer: Option<String>,
    last_event_id: Option<String>,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// The id of the last dispatched message (or id-only message): what a
    /// client sends as `Last-Event-ID` when it reconnects.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Parses a chunk; returns the messages and comments it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseItem> {
        let mut items = Vec::new();
        for &byte in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match byte {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(item) = self.line_ended(&String::from_utf8_lossy(&line)) {
                        items.push(item);
                    }
                }
                _ => self.line.push(byte),
            }
        }
        items
    }

    fn line_ended(&mut self, line: &str) -> Option<SseItem> {
        if line.is_empty() {
            return self.dispatch();
        }
        if let Some(comment) = line.strip_prefix(':') {
            return Some(SseItem::Comment(comment.to_string()));
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => self.event = value.to_string(),
            "id" if !value.contains('\0') => self.id_buffer = Some(value.to_string()),
            // `retry` and unknown fields: nothing Cairn's client uses.
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseItem> {
        self.last_event_id = self.id_buffer.clone();
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        Some(SseItem::Message(SseMessage {
            id: self.last_event_id.clone(),
            event: if event.is_empty() {
                "message".to_string()
            } else {
                event
            },
            data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: Option<&str>, event: &str, data: &str) -> SseItem {
        SseItem::Message(SseMessage {
            id: id.map(str::to_string),
            event: event.to_string(),
            data: data.to_string(),
        })
    }

    /// Feeds `input` in pieces of every size from 1 byte up; each split must
    /// parse the same.
    fn parse_in_pieces(input: &[u8]) -> (Vec<SseItem>, Option<String>) {
        let mut whole = SseParser::new();
        let expected = whole.feed(input);
        for size in 1..=input.len().max(1) {
            let mut parser = SseParser::new();
            let items: Vec<SseItem> = input
                .chunks(size)
                .flat_map(|chunk| parser.feed(chunk))
                .collect();
            assert_eq!(items, expected, "pieces of {size} bytes");
            assert_eq!(parser.last_event_id(), whole.last_event_id());
        }
        (expected, whole.last_event_id().map(str::to_string))
    }

    #[test]
    fn messages_comments_and_multi_line_data() {
        let input = b": heartbeat\n\nid: 7\nevent: PoolScaled\ndata: {\"a\":\ndata:1}\n\ndata: no id field\n\n";
        let (items, last) = parse_in_pieces(input);
        assert_eq!(
            items,
            vec![
                SseItem::Comment(" heartbeat".into()),
                message(Some("7"), "PoolScaled", "{\"a\":\n1}"),
                // The last event id carries over to messages without one.
                message(Some("7"), "message", "no id field"),
            ]
        );
        assert_eq!(last.as_deref(), Some("7"));
    }

    #[test]
    fn every_line_ending_and_splits_inside_them() {
        let (items, _) = parse_in_pieces(b"id:1\r\ndata:a\r\n\r\nid:2\rdata:b\r\rid:3\ndata:c\n\n");
        assert_eq!(
            items,
            vec![
                message(Some("1"), "message", "a"),
                message(Some("2"), "message", "b"),
                message(Some("3"), "message", "c"),
            ]
        );
    }

    #[test]
    fn an_id_only_message_moves_the_last_id_without_dispatching() {
        let mut parser = SseParser::new();
        assert_eq!(parser.feed(b"id:41\n\n"), vec![]);
        assert_eq!(parser.last_event_id(), Some("41"));
    }

    #[test]
    fn an_unfinished_message_is_neither_dispatched_nor_resumed_from() {
        let mut parser = SseParser::new();
        assert_eq!(
            parser.feed(b"id:1\ndata:x\n\nid:2\ndata:y\n"),
            vec![message(Some("1"), "message", "x")]
        );
        // The connection drops here: the client resumes after 1, not 2.
        assert_eq!(parser.last_event_id(), Some("1"));
    }

    #[test]
    fn odd_fields_are_ignored_or_read_as_the_standard_says() {
        let (items, last) =
            parse_in_pieces(b"retry: 10\nfoo: bar\ndata\nid: a\0b\nevent:x\n\n:\n\n");
        // `data` without a colon is an empty data line; an id with NUL is ignored.
        assert_eq!(
            items,
            vec![message(None, "x", ""), SseItem::Comment(String::new())]
        );
        assert_eq!(last, None);
    }
}
