//! `rtc_offer`, `rtc_answer`, `rtc_ice_candidate`: relayed to the target connection,
//! only if it shares a room with the sender (presence says).

use switchboard_protocol::{ErrorKind, RtcRelay, RtcSignal};

use crate::hub::{Hub, Session, Wire};

pub(super) async fn run(hub: &Hub, session: &Session, signal: RtcSignal) -> Result<(), ErrorKind> {
    let target = hub
        .session(&signal.target_peer_id)
        .filter(|t| {
            t.wire != Wire::Sse
                && (t.wire == Wire::SocketIoRtc) == (session.wire == Wire::SocketIoRtc)
        })
        .ok_or(ErrorKind::TargetPeerNotFound)?;
    let rooms = session.rooms();
    let shared = hub
        .presence()
        .in_any(&target.client_id, &rooms)
        .await
        .map_err(|e| super::internal("presence", e))?;
    if !shared {
        return Err(ErrorKind::TargetPeerNotFound);
    }
    let relay = RtcRelay {
        sender_peer_id: session.client_id.to_string(),
        payload: signal.payload,
    };
    target.reply(signal.kind.as_str(), &relay, None);
    Ok(())
}
