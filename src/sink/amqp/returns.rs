//! Which published message the broker returned as unroutable. The AMQP client hands a
//! returned message to whichever publisher confirm completes next after it arrives; when
//! the broker acks several messages at once, that can be the confirm of another message,
//! even one of the next batch. So returns are matched to messages by what they carry
//! (exchange and message id), gathered from every confirm that has completed.

use std::collections::{HashMap, VecDeque};

/// The returns seen and not yet matched to their message.
#[derive(Debug, Default)]
pub struct Returns {
    by_message: HashMap<(String, String), VecDeque<Reply>>,
}

/// The broker's reason for returning a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Returns {
    /// Keeps the return of the message `message_id` published to `exchange`.
    pub fn add(&mut self, exchange: &str, message_id: &str, reply: Reply) {
        self.by_message
            .entry((exchange.to_owned(), message_id.to_owned()))
            .or_default()
            .push_back(reply);
    }

    /// Takes the return of the message `message_id` published to `exchange`, if it came
    /// back. A message published twice to one exchange is matched once per return.
    pub fn take(&mut self, exchange: &str, message_id: &str) -> Option<Reply> {
        let key = (exchange.to_owned(), message_id.to_owned());
        let replies = self.by_message.get_mut(&key)?;
        let reply = replies.pop_front();
        if replies.is_empty() {
            self.by_message.remove(&key);
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> Reply {
        Reply {
            code: 312,
            text: "NO_ROUTE".into(),
        }
    }

    #[test]
    fn returns_are_matched_by_exchange_and_message_id_not_by_arrival() {
        let mut returns = Returns::default();
        returns.add("it.nobody", "e2", reply());
        assert_eq!(returns.take("it.pf-10", "e2"), None, "another exchange");
        assert_eq!(returns.take("it.nobody", "e1"), None, "another message");
        assert_eq!(returns.take("it.nobody", "e2"), Some(reply()));
        assert_eq!(returns.take("it.nobody", "e2"), None, "taken once");
    }

    #[test]
    fn a_message_published_twice_to_one_exchange_is_matched_per_return() {
        let mut returns = Returns::default();
        returns.add("it.fa", "e1", reply());
        returns.add("it.fa", "e1", reply());
        assert!(returns.take("it.fa", "e1").is_some());
        assert!(returns.take("it.fa", "e1").is_some());
        assert!(returns.take("it.fa", "e1").is_none());
    }
}
