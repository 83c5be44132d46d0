//! The mails authd sends, and their wording: built-in templates per kind that
//! a tenant admin may override (subject, plain text, HTML), rendered with
//! minijinja. HTML templates escape every value by default, unknown variables
//! are errors, and a template's run is bounded, so an override is checked
//! once when it is saved ([`validate_overrides`]) and cannot fail or run away
//! when a user needs the mail.

use std::time::Duration;

use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a mail is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailKind {
    /// Proves the address of a new (or unverified) account.
    Verification,
    /// Sets a new password.
    PasswordReset,
    /// Signs in without a password.
    MagicLink,
    /// Proves a new address before it replaces the old one (sent to the new one).
    EmailChange,
    /// Tells the old address that the account's email changed.
    EmailChanged,
}

impl MailKind {
    pub const ALL: [MailKind; 5] =
        [Self::Verification, Self::PasswordReset, Self::MagicLink, Self::EmailChange, Self::EmailChanged];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verification => "verification",
            Self::PasswordReset => "password_reset",
            Self::MagicLink => "magic_link",
            Self::EmailChange => "email_change",
            Self::EmailChanged => "email_changed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// How long the link of this kind lives (docs/api.md); `None` for a
    /// notice that carries no link.
    pub fn link_lifetime(self) -> Option<Duration> {
        match self {
            Self::Verification | Self::EmailChange => Some(Duration::from_secs(24 * 3600)),
            Self::PasswordReset => Some(Duration::from_secs(30 * 60)),
            Self::MagicLink => Some(Duration::from_secs(15 * 60)),
            Self::EmailChanged => None,
        }
    }
}

/// A tenant's wording of one kind of mail; a part left out keeps the built-in one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateOverride {
    pub kind: MailKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

/// The values a template sees: `tenant`, `email`, `link`, `expires_in`,
/// `new_email` (each a string; absent ones are empty).
#[derive(Clone, Debug, Default, Serialize)]
pub struct MailContext {
    /// The tenant's display name.
    pub tenant: String,
    /// The recipient's address.
    pub email: String,
    /// The link to open (empty for a notice).
    pub link: String,
    /// How long the link lives, in words ("30 minutes").
    pub expires_in: String,
    /// The account's new address (email change mails).
    pub new_email: String,
}

/// A rendered mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

const MAX_SUBJECT: usize = 200;
const MAX_BODY: usize = 20_000;
/// Bounds a template's work (loops included): far above what a mail needs.
const FUEL: u64 = 100_000;

fn builtin(kind: MailKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        MailKind::Verification => (
            "Verify your email address for {{ tenant }}",
            "Hello,\n\nplease confirm that {{ email }} is your email address for {{ tenant }} by opening this link:\n\n{{ link }}\n\nThe link works once and expires in {{ expires_in }}. If you did not create an account, ignore this message.\n",
            "<p>Hello,</p>\n<p>please confirm that {{ email }} is your email address for {{ tenant }}:</p>\n<p><a href=\"{{ link }}\">Verify my email address</a></p>\n<p>The link works once and expires in {{ expires_in }}. If you did not create an account, ignore this message.</p>\n",
        ),
        MailKind::PasswordReset => (
            "Reset your password for {{ tenant }}",
            "Hello,\n\nsomeone asked to reset the password of {{ email }} at {{ tenant }}. To choose a new password, open this link:\n\n{{ link }}\n\nThe link works once and expires in {{ expires_in }}. If you did not ask for this, ignore this message: your password stays as it is.\n",
            "<p>Hello,</p>\n<p>someone asked to reset the password of {{ email }} at {{ tenant }}.</p>\n<p><a href=\"{{ link }}\">Choose a new password</a></p>\n<p>The link works once and expires in {{ expires_in }}. If you did not ask for this, ignore this message: your password stays as it is.</p>\n",
        ),
        MailKind::MagicLink => (
            "Your sign-in link for {{ tenant }}",
            "Hello,\n\nopen this link to sign in to {{ tenant }} as {{ email }}:\n\n{{ link }}\n\nThe link works once and expires in {{ expires_in }}. If you did not ask to sign in, ignore this message.\n",
            "<p>Hello,</p>\n<p>open this link to sign in to {{ tenant }} as {{ email }}:</p>\n<p><a href=\"{{ link }}\">Sign in</a></p>\n<p>The link works once and expires in {{ expires_in }}. If you did not ask to sign in, ignore this message.</p>\n",
        ),
        MailKind::EmailChange => (
            "Confirm your new email address for {{ tenant }}",
            "Hello,\n\nplease confirm {{ new_email }} as the new email address of your {{ tenant }} account by opening this link:\n\n{{ link }}\n\nThe link works once and expires in {{ expires_in }}. Until then your account keeps its current address. If you did not ask for this, ignore this message.\n",
            "<p>Hello,</p>\n<p>please confirm {{ new_email }} as the new email address of your {{ tenant }} account:</p>\n<p><a href=\"{{ link }}\">Confirm my new address</a></p>\n<p>The link works once and expires in {{ expires_in }}. Until then your account keeps its current address. If you did not ask for this, ignore this message.</p>\n",
        ),
        MailKind::EmailChanged => (
            "Your email address at {{ tenant }} was changed",
            "Hello,\n\nthe email address of your {{ tenant }} account was changed from {{ email }} to {{ new_email }}. If you did not do this, contact {{ tenant }} at once.\n",
            "<p>Hello,</p>\n<p>the email address of your {{ tenant }} account was changed from {{ email }} to {{ new_email }}.</p>\n<p>If you did not do this, contact {{ tenant }} at once.</p>\n",
        ),
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    // The default callback escapes templates named `*.html` only.
    env
}

fn render_one(env: &Environment<'_>, name: &str, source: &str, ctx: &MailContext) -> Result<String> {
    env.render_named_str(name, source, ctx).map_err(|e| {
        Error::bad_input("emailTemplates", format!("{name}: {}", e.detail().unwrap_or("invalid template")))
    })
}

/// Renders `kind` with the tenant's overrides (built-in parts otherwise).
pub fn render(kind: MailKind, overrides: &[TemplateOverride], ctx: &MailContext) -> Result<Rendered> {
    let (subject, text, html) = builtin(kind);
    let own = overrides.iter().find(|o| o.kind == kind);
    let pick = |part: Option<&String>, default: &'static str| part.map(String::as_str).unwrap_or(default).to_owned();
    let env = environment();
    let prefix = kind.as_str();
    let subject =
        render_one(&env, &format!("{prefix}.subject.txt"), &pick(own.and_then(|o| o.subject.as_ref()), subject), ctx)?;
    // A subject is one header line.
    let subject: String =
        subject.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_owned();
    let text = render_one(&env, &format!("{prefix}.text.txt"), &pick(own.and_then(|o| o.text.as_ref()), text), ctx)?;
    let html = render_one(&env, &format!("{prefix}.html"), &pick(own.and_then(|o| o.html.as_ref()), html), ctx)?;
    Ok(Rendered { subject, text, html })
}

/// Checks overrides when they are saved: one per kind, within size limits,
/// and each renders with sample values (syntax, unknown variables, filters).
pub fn validate_overrides(overrides: &[TemplateOverride]) -> Result<()> {
    let field = "emailTemplates";
    for (i, o) in overrides.iter().enumerate() {
        if overrides[..i].iter().any(|p| p.kind == o.kind) {
            return Err(Error::bad_input(field, format!("{} is given twice", o.kind.as_str())));
        }
        if o.subject.as_ref().is_some_and(|s| s.len() > MAX_SUBJECT) {
            return Err(Error::bad_input(field, format!("a subject is at most {MAX_SUBJECT} bytes")));
        }
        if [&o.text, &o.html].into_iter().flatten().any(|b| b.len() > MAX_BODY) {
            return Err(Error::bad_input(field, format!("a template is at most {MAX_BODY} bytes")));
        }
        let sample = MailContext {
            tenant: "Example".into(),
            email: "someone@example.com".into(),
            // No character HTML escaping would change, so both parts can be searched for it.
            link: "SAMPLE-LINK-0123456789".into(),
            expires_in: "30 minutes".into(),
            new_email: "someone.else@example.com".into(),
        };
        let rendered = render(o.kind, std::slice::from_ref(o), &sample)?;
        if rendered.subject.is_empty() {
            return Err(Error::bad_input(field, format!("{}: the subject renders empty", o.kind.as_str())));
        }
        if o.kind.link_lifetime().is_some()
            && !(rendered.text.contains(&sample.link) && rendered.html.contains(&sample.link))
        {
            return Err(Error::bad_input(
                field,
                format!("{}: the text and the HTML must both show {{{{ link }}}}", o.kind.as_str()),
            ));
        }
    }
    Ok(())
}

/// "24 hours", "30 minutes".
pub fn describe(d: Duration) -> String {
    let mins = d.as_secs() / 60;
    match mins {
        m if m >= 60 && m % 60 == 0 => {
            let h = m / 60;
            if h == 1 { "1 hour".into() } else { format!("{h} hours") }
        }
        1 => "1 minute".into(),
        m => format!("{m} minutes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> MailContext {
        MailContext {
            tenant: "Acme <b>".into(),
            email: "a@example.com".into(),
            link: "https://app.example.com/cb?token=x&y=1".into(),
            expires_in: describe(Duration::from_secs(1800)),
            new_email: String::new(),
        }
    }

    #[test]
    fn builtins_render_and_html_escapes() {
        for kind in MailKind::ALL {
            let r = render(kind, &[], &ctx()).unwrap();
            assert!(r.subject.contains("Acme <b>"), "{kind:?}: subject is plain text");
            assert!(r.html.contains("Acme &lt;b&gt;"), "{kind:?}: HTML escapes values");
            if kind.link_lifetime().is_some() {
                assert!(r.text.contains("https://app.example.com/cb?token=x&y=1"));
                assert!(r.html.contains("token=x&amp;y=1"), "{}", r.html);
                assert!(r.text.contains("30 minutes"));
            }
        }
    }

    #[test]
    fn overrides_replace_parts_and_broken_ones_are_refused() {
        let o = TemplateOverride {
            kind: MailKind::PasswordReset,
            subject: Some("Reset at {{ tenant }}".into()),
            text: None,
            html: None,
        };
        let r = render(MailKind::PasswordReset, std::slice::from_ref(&o), &ctx()).unwrap();
        assert_eq!(r.subject, "Reset at Acme <b>");
        validate_overrides(&[o]).unwrap();
        for bad in ["{{ link ", "{{ nosuchvar }} {{ link }}", "{% for x in y %}", "no link here"] {
            let o = TemplateOverride { kind: MailKind::MagicLink, subject: None, text: Some(bad.into()), html: None };
            assert!(validate_overrides(&[o]).is_err(), "{bad:?} was accepted");
        }
        let loop_forever = TemplateOverride {
            kind: MailKind::EmailChanged,
            subject: None,
            text: Some("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}".into()),
            html: None,
        };
        assert!(validate_overrides(&[loop_forever]).is_err());
    }

    #[test]
    fn lifetimes_match_the_contract() {
        assert_eq!(describe(MailKind::Verification.link_lifetime().unwrap()), "24 hours");
        assert_eq!(describe(MailKind::PasswordReset.link_lifetime().unwrap()), "30 minutes");
        assert_eq!(describe(MailKind::MagicLink.link_lifetime().unwrap()), "15 minutes");
    }
}
