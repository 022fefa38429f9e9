//! Hiding secrets wherever configuration is shown or logged: in `validate`'s messages, the admin
//! views, connection errors and logs.
//!
//! A URL's password (`scheme://user:PASSWORD@host`, or a lone token `scheme://TOKEN@host`) and the
//! values of its query (`?token=VALUE`) are replaced by `***`. The work is textual, so that a value
//! that does not even parse as a URL (the very one `validate` complains about) is hidden too.

use std::borrow::Cow;

/// What replaces a secret.
pub const MASK: &str = "***";

/// `text` with every URL's password, lone user token and query values masked. Text without a
/// URL comes back borrowed.
pub fn url(text: &str) -> Cow<'_, str> {
    if !text.contains("://") && !text.contains('?') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The URL as written ends at white space, a quote or backtick around it, or the comma
        // before the next URL of a list.
        let mut word = after
            .find(|c: char| c.is_whitespace() || matches!(c, '`' | '"' | '\'' | '<' | '>'))
            .unwrap_or(after.len());
        if let Some(next) = after[..word].find("://") {
            word = after[..next].rfind(',').unwrap_or(word);
        }
        // The user information ends at the URL's last `@`, wherever the first `/`, `?` or `#`
        // is: a password written without percent-encoding may hold any of them, and masking a
        // path that holds an `@` too is the safe mistake.
        let (authority, tail) = match after[..word].rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &after[..userinfo_end];
                match userinfo.split_once(':') {
                    Some((user, _)) if !user.contains(['/', '?', '#']) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    // A lone user part is how tokens travel (`nats://TOKEN@host`).
                    _ => out.push_str(MASK),
                }
                let host = &after[userinfo_end..word];
                let end = host.find(['/', '?', '#', ',']).unwrap_or(host.len());
                (&host[..end], &after[userinfo_end + end..])
            }
            None => {
                let end = after[..word].find(['/', '?', '#', ',']).unwrap_or(word);
                after.split_at(end)
            }
        };
        out.push_str(authority);
        // The path and query, up to the next white space, or the comma before the next URL.
        let mut end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        if let Some(next) = tail[..end].find("://") {
            end = tail[..next].rfind(',').unwrap_or(end);
        }
        let (rest_of_url, after_url) = tail.split_at(end);
        out.push_str(&query(rest_of_url));
        rest = after_url;
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// A path with its query values masked (`/p?a=1&b` -> `/p?a=***&b`).
fn query(path_and_query: &str) -> Cow<'_, str> {
    let Some((path, q)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    let (q, fragment) = match q.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (q, None),
    };
    let masked: Vec<String> = q
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) => format!("{k}={MASK}"),
            None => pair.to_string(),
        })
        .collect();
    let mut out = format!("{path}?{}", masked.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn passwords_tokens_and_query_values_are_masked() {
        assert_eq!(
            url("http://user:PASSWORD@host:8080/fn?token=abc&x=1#frag"),
            "http://user:***@host:8080/fn?token=***&x=***#frag"
        );
        assert_eq!(
            url("nats://s3cr3t@127.0.0.1:4222"),
            "nats://***@127.0.0.1:4222"
        );
        assert_eq!(
            url("`amqp://admin:SECRET@` is not a URL: empty host"),
            "`amqp://admin:***@` is not a URL: empty host"
        );
        assert_eq!(
            url("nats://a:b@h1:4222,nats://c:d@h2:4222"),
            "nats://a:***@h1:4222,nats://c:***@h2:4222"
        );
        assert_eq!(
            url("cannot connect to mqtt://h:1883 (refused)"),
            "cannot connect to mqtt://h:1883 (refused)"
        );
        assert_eq!(url("no url here"), "no url here");
        // A path with an `@` cannot be told from a token holding a `/`: masked.
        assert_eq!(url("http://h/p@q"), "http://***@q");
    }

    /// Before: a password with an unencoded `/`, `#` or `?` ended the authority early, and the
    /// rest of the password was shown whole.
    #[test]
    fn passwords_holding_url_delimiters_are_masked_whole() {
        for password in ["pa/ss", "pa#ss", "pa?ss", "p/a#s?s", "pa@ss"] {
            let text = format!("`amqp://admin:{password}@rabbit:5672/vhost` is not a URL: invalid");
            let masked = url(&text);
            assert_eq!(
                masked, "`amqp://admin:***@rabbit:5672/vhost` is not a URL: invalid",
                "{password}"
            );
            let token = format!("nats://{password}@h:4222 refused");
            assert_eq!(url(&token), "nats://***@h:4222 refused", "{password}");
        }
        assert_eq!(
            url("redis://:se/cret@h:6379/0?x=1"),
            "redis://:***@h:6379/0?x=***"
        );
    }
}
