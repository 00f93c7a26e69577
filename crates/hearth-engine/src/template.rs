//! Chat templates (`tokenizer_config.json`'s Jinja `chat_template`) rendered with minijinja.

use crate::error::EngineError;
use serde::Serialize;

/// One chat message.
///
/// ```
/// let m = hearth_engine::ChatMessage::new("user", "hi");
/// assert_eq!(m.role, "user");
/// ```
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// Message text.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
///
/// ```
/// use hearth_engine::{ChatMessage, ChatTemplate};
/// let t = ChatTemplate::new(
///     "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}".into(),
///     Some("<s>".into()), None).unwrap();
/// let s = t.render(&[ChatMessage::new("user", " hi ")], true).unwrap();
/// assert_eq!(s, "<s><user>hi<assistant>");
/// ```
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

fn raise_exception(msg: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// Compiles a template.
    pub fn new(source: String, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self, EngineError> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant header.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, EngineError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| EngineError::Template(e.to_string()))
    }
}
