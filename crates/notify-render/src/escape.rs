//! How interpolated values are escaped, per channel and field.

use minijinja::value::Value;
use minijinja::{escape_formatter, AutoEscape, Error, Output, State};

use crate::Channel;

/// The custom auto-escape mode of Slack texts (see [`format`]).
const SLACK: &str = "slack";

/// The internal template name of `field` for `channel`: the auto-escape callback only sees the
/// name, so the name carries both. Static because the environment borrows names for as long as it
/// borrows the sources.
pub(crate) fn template_name(channel: Channel, field: &str) -> &'static str {
    const NAMES: [[&str; 3]; 4] = [
        ["email.subject", "email.body", "email.html_body"],
        ["slack.subject", "slack.body", "slack.html_body"],
        ["teams.subject", "teams.body", "teams.html_body"],
        ["webhook.subject", "webhook.body", "webhook.html_body"],
    ];
    let row = match channel {
        // An unspecified channel is treated as email: plain text, and HTML only for html_body.
        Channel::Email | Channel::Unspecified => 0,
        Channel::Slack => 1,
        Channel::Teams => 2,
        Channel::Webhook => 3,
    };
    let column = match field {
        "subject" => 0,
        "html_body" => 2,
        _ => 1,
    };
    NAMES[row][column]
}

/// The auto-escape mode for a template named by [`template_name`].
pub(crate) fn auto_escape(name: &str) -> AutoEscape {
    match name.split_once('.') {
        // html_body is HTML whatever the channel.
        Some((_, "html_body")) => AutoEscape::Html,
        // `<!channel>`, `<@U123>` and `<url|text>` are Slack control sequences: a value such as a
        // job name must not be able to mention everyone or forge a link.
        Some(("slack", _)) => AutoEscape::Custom(SLACK),
        // Each `{{ value }}` becomes a JSON literal, so values cannot break out of strings.
        Some(("webhook", "body")) => AutoEscape::Json,
        // Email text is plain; Teams text is JSON-encoded into an Adaptive Card by the service.
        _ => AutoEscape::None,
    }
}

/// The environment's formatter: the default one, plus Slack escaping, and `none` printing nothing
/// in text (a missing optional value should not print the word "none" into a message).
pub(crate) fn format(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    let mode = state.auto_escape();
    if value.is_none() && mode != AutoEscape::Json {
        return Ok(());
    }
    match mode {
        AutoEscape::Custom(SLACK) if !value.is_safe() => {
            out.write_str(&slack_escape(&value.to_string()))?;
            Ok(())
        }
        _ => escape_formatter(out, state, value),
    }
}

/// Escapes the three characters Slack's mrkdwn gives a meaning to, as Slack documents.
pub(crate) fn slack_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_escape_replaces_control_characters() {
        assert_eq!(
            slack_escape("<!channel> & <@U1|x>"),
            "&lt;!channel&gt; &amp; &lt;@U1|x&gt;"
        );
    }

    #[test]
    fn modes_per_channel_and_field() {
        let mode = |c, f| auto_escape(template_name(c, f));
        assert_eq!(mode(Channel::Email, "subject"), AutoEscape::None);
        assert_eq!(mode(Channel::Email, "body"), AutoEscape::None);
        assert_eq!(mode(Channel::Email, "html_body"), AutoEscape::Html);
        assert_eq!(mode(Channel::Slack, "body"), AutoEscape::Custom(SLACK));
        assert_eq!(mode(Channel::Slack, "subject"), AutoEscape::Custom(SLACK));
        assert_eq!(mode(Channel::Teams, "body"), AutoEscape::None);
        assert_eq!(mode(Channel::Webhook, "body"), AutoEscape::Json);
        assert_eq!(mode(Channel::Webhook, "subject"), AutoEscape::None);
    }
}
