//! `ping`: answered at once with `pong {timestamp}`.

use switchboard_protocol::{Pong, Ref, now_millis};

use crate::hub::Session;

pub(super) fn run(session: &Session, r: Option<&Ref>) {
    let pong = Pong {
        timestamp: now_millis(),
    };
    session.reply("pong", &pong, r);
}
