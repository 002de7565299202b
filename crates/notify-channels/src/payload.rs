//! Message bodies for Slack incoming webhooks (Block Kit) and Microsoft Teams Workflows
//! webhooks (an Adaptive Card in a message envelope).

use bytes::Bytes;
use serde_json::{json, Value};

/// Slack rejects a header's plain text above 150 characters and a section's above 3000.
const SLACK_HEADER_CHARS: usize = 150;
const SLACK_SECTION_CHARS: usize = 3000;
/// Slack allows 50 blocks a message; one may be the header.
const SLACK_MAX_SECTIONS: usize = 49;

/// A Slack Block Kit message: a header with the subject (when there is one) and the body in
/// mrkdwn sections. The text goes in as given: the template engine already escaped `&`, `<`
/// and `>` in every value it interpolated (a job named `<!channel>` pings nobody), while the
/// template's own markup — a `<https://…|link>`, a mention it means — stays markup. Escaping
/// here as well would show `&amp;lt;` to people.
pub fn slack_payload(subject: &str, body: &str) -> Bytes {
    let body = body.to_owned();
    let mut blocks = Vec::new();
    if !subject.trim().is_empty() {
        blocks.push(json!({
            "type": "header",
            "text": {"type": "plain_text", "text": truncate(subject.trim(), SLACK_HEADER_CHARS), "emoji": true},
        }));
    }
    let mut sections = split(&body, SLACK_SECTION_CHARS);
    if sections.len() > SLACK_MAX_SECTIONS {
        sections.truncate(SLACK_MAX_SECTIONS);
        if let Some(last) = sections.last_mut() {
            *last = truncate(last, SLACK_SECTION_CHARS);
        }
    }
    for text in sections {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    // The top-level text is what notifications and screen readers show.
    let fallback = if !subject.trim().is_empty() {
        subject.trim().to_owned()
    } else if !body.trim().is_empty() {
        truncate(&body, SLACK_SECTION_CHARS)
    } else {
        "OpsConductor notification".to_owned()
    };
    to_bytes(&json!({"text": fallback, "blocks": blocks}))
}

/// A Teams Workflows ("Post to a channel when a webhook request is received") message holding
/// one Adaptive Card 1.4: the subject as a large bold heading, then the body.
pub fn teams_payload(subject: &str, body: &str) -> Bytes {
    let mut card_body = Vec::new();
    if !subject.trim().is_empty() {
        card_body.push(json!({
            "type": "TextBlock", "text": subject.trim(), "weight": "Bolder", "size": "Large", "wrap": true,
        }));
    }
    card_body.push(json!({"type": "TextBlock", "text": body, "wrap": true}));
    to_bytes(&json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": card_body,
            },
        }],
    }))
}

fn to_bytes(value: &Value) -> Bytes {
    // Serializing a Value built from strings cannot fail; an empty body would be refused by the
    // destination and surface there rather than panic here.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// At most `max` characters, ending in an ellipsis when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Chunks of at most `max` characters, cut at the last newline in a chunk when there is one so
/// paragraphs stay whole. Empty text gives no chunks (Slack refuses empty sections).
fn split(text: &str, max: usize) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut rest: Vec<char> = text.chars().collect();
    while !rest.is_empty() {
        if rest.len() <= max {
            chunks.push(rest.iter().collect());
            break;
        }
        let cut = rest[..max]
            .iter()
            .rposition(|&c| c == '\n')
            .filter(|&i| i > 0)
            .map(|i| i + 1)
            .unwrap_or(max);
        chunks.push(rest[..cut].iter().collect());
        rest.drain(..cut);
    }
    chunks.retain(|c: &String| !c.trim().is_empty());
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &Bytes) -> Value {
        serde_json::from_slice(b).expect("valid JSON")
    }

    #[test]
    fn slack_structure_and_text_as_rendered() {
        let v = parse(&slack_payload(
            "Job \"backup\" failed",
            "line 1\nline \"2\" &lt;!channel&gt; <https://ops.example/r/1|run 1>",
        ));
        assert_eq!(v["text"], "Job \"backup\" failed");
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert_eq!(blocks[0]["text"]["text"], "Job \"backup\" failed");
        assert_eq!(blocks[1]["type"], "section");
        assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
        assert_eq!(
            blocks[1]["text"]["text"],
            "line 1\nline \"2\" &lt;!channel&gt; <https://ops.example/r/1|run 1>",
            "escaped once, by the template engine; links stay links"
        );
        // The raw bytes carry JSON escapes, not literal newlines or bare quotes.
        let raw = std::str::from_utf8(&slack_payload("a\"b", "c\nd"))
            .unwrap()
            .to_owned();
        assert!(raw.contains(r#"a\"b"#) && raw.contains(r"c\nd"), "{raw}");
    }

    #[test]
    fn slack_limits() {
        let v = parse(&slack_payload(&"s".repeat(400), &"x".repeat(7000)));
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(
            blocks[0]["text"]["text"].as_str().unwrap().chars().count(),
            150
        );
        assert_eq!(blocks.len(), 1 + 3);
        for b in &blocks[1..] {
            assert!(b["text"]["text"].as_str().unwrap().chars().count() <= 3000);
        }
        let total: usize = blocks[1..]
            .iter()
            .map(|b| b["text"]["text"].as_str().unwrap().len())
            .sum();
        assert_eq!(total, 7000);
    }

    #[test]
    fn slack_without_subject() {
        let v = parse(&slack_payload("", "only body"));
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0]["type"], "section");
        assert_eq!(v["text"], "only body");
    }

    #[test]
    fn teams_structure_and_escaping() {
        let v = parse(&teams_payload("Disk \"full\"", "a\nb \"c\""));
        assert_eq!(v["type"], "message");
        let att = &v["attachments"][0];
        assert_eq!(
            att["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert!(att["contentUrl"].is_null());
        let card = &att["content"];
        assert_eq!(
            card["$schema"],
            "http://adaptivecards.io/schemas/adaptive-card.json"
        );
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        let body = card["body"].as_array().unwrap();
        assert_eq!(body.len(), 2);
        assert_eq!(body[0]["text"], "Disk \"full\"");
        assert_eq!(body[0]["weight"], "Bolder");
        assert_eq!(body[0]["size"], "Large");
        assert_eq!(body[0]["wrap"], true);
        assert_eq!(body[1]["text"], "a\nb \"c\"");
        assert_eq!(body[1]["wrap"], true);
    }
}
