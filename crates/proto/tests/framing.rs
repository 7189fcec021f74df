//! Framing tests: round trips, and every way a hostile peer can break a frame.

use ignition_proto::{
    encode, read_frame, ErrorBody, FrameDecoder, FrameError, GuestMessage, HostMessage,
    InvokeRequest, InvokeResult, Outcome, HEADER_LEN, MAX_GUEST_FRAME,
};
use proptest::prelude::*;

fn result_msg(body: Vec<u8>) -> GuestMessage {
    GuestMessage::Result(InvokeResult {
        request_id: "req-1".into(),
        outcome: Outcome::Success(body),
        logs: b"hello\n".to_vec(),
        logs_truncated: false,
        duration_ms: 7,
        network_us: 0,
    })
}

#[test]
fn round_trip_through_a_reader() {
    let msg = result_msg(b"{\"ok\":true}".to_vec());
    let frame = encode(&msg).unwrap();
    let mut reader = &frame[..];
    let got: Option<GuestMessage> = read_frame(&mut reader, MAX_GUEST_FRAME).unwrap();
    assert_eq!(got, Some(msg));
    let end: Option<GuestMessage> = read_frame(&mut reader, MAX_GUEST_FRAME).unwrap();
    assert_eq!(end, None, "clean end of stream");
}

#[test]
fn truncated_header_and_body_are_errors() {
    let frame = encode(&result_msg(vec![1; 100])).unwrap();
    for cut in [3, HEADER_LEN, HEADER_LEN + 10, frame.len() - 1] {
        let mut reader = &frame[..cut];
        let err = read_frame::<GuestMessage>(&mut reader, MAX_GUEST_FRAME).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { .. }),
            "cut {cut}: {err}"
        );
    }
}

#[test]
fn oversized_frame_is_refused_before_reading_the_body() {
    let mut raw = vec![b'I', b'G', ignition_proto::VERSION, 0];
    raw.extend_from_slice(&(MAX_GUEST_FRAME + 1).to_be_bytes());
    // No body follows: the decoder must refuse on the header alone.
    let err = read_frame::<GuestMessage>(&mut &raw[..], MAX_GUEST_FRAME).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    let mut dec = FrameDecoder::new(MAX_GUEST_FRAME);
    dec.feed(&raw);
    assert!(matches!(
        dec.next_message::<GuestMessage>(),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn bad_magic_version_and_reserved_are_refused() {
    let good = encode(&HostMessage::Shutdown).unwrap();
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(matches!(
        read_frame::<HostMessage>(&mut &bad[..], 1024),
        Err(FrameError::BadMagic(_))
    ));
    let mut bad = good.clone();
    bad[2] = 99;
    assert!(matches!(
        read_frame::<HostMessage>(&mut &bad[..], 1024),
        Err(FrameError::Version { got: 99 })
    ));
    let mut bad = good;
    bad[3] = 1;
    assert!(matches!(
        read_frame::<HostMessage>(&mut &bad[..], 1024),
        Err(FrameError::Reserved(1))
    ));
}

#[test]
fn garbage_body_and_trailing_bytes_are_refused() {
    let mut frame = encode(&GuestMessage::Loaded).unwrap();
    frame.push(0);
    let len = u32::try_from(frame.len() - HEADER_LEN).unwrap();
    frame[4..8].copy_from_slice(&len.to_be_bytes());
    let err = read_frame::<GuestMessage>(&mut &frame[..], 1024).unwrap_err();
    assert!(matches!(err, FrameError::Body(_)), "{err}");

    let mut garbage = vec![b'I', b'G', ignition_proto::VERSION, 0, 0, 0, 0, 3];
    garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
    let err = read_frame::<GuestMessage>(&mut &garbage[..], 1024).unwrap_err();
    assert!(matches!(err, FrameError::Body(_)), "{err}");
}

#[test]
fn decoder_reports_a_partial_frame_at_end_of_stream() {
    let frame = encode(&GuestMessage::Loaded).unwrap();
    let mut dec = FrameDecoder::new(1024);
    dec.feed(&frame[..frame.len() - 1]);
    assert!(dec.next_message::<GuestMessage>().unwrap().is_none());
    assert!(matches!(dec.finish(), Err(FrameError::Truncated { .. })));
}

fn host_message() -> impl Strategy<Value = HostMessage> {
    prop_oneof![
        Just(HostMessage::Shutdown),
        (
            any::<String>(),
            proptest::collection::vec(any::<u8>(), 0..512),
            any::<u64>()
        )
            .prop_map(|(id, payload, t)| HostMessage::Invoke(InvokeRequest {
                request_id: id,
                payload,
                timeout_ms: t,
                host_time_unix_ms: t / 2,
                entropy: vec![1, 2, 3],
                vm_id: "vm-1".into(),
                client_context: None,
                network: (t % 2 == 0).then(|| ignition_proto::NetworkConfig {
                    address: [10, 200, 0, 2],
                    prefix_len: 30,
                    gateway: [10, 200, 0, 1],
                    dns: vec![[198, 18, 0, 53]],
                }),
            })),
    ]
}

fn guest_message() -> impl Strategy<Value = GuestMessage> {
    prop_oneof![
        Just(GuestMessage::Loaded),
        (any::<String>(), any::<String>()).prop_map(|(a, k)| GuestMessage::Ready {
            agent_version: a,
            kernel_release: k
        }),
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(result_msg),
        (
            any::<String>(),
            proptest::collection::vec(any::<String>(), 0..4)
        )
            .prop_map(|(m, st)| {
                GuestMessage::Result(InvokeResult {
                    request_id: "r".into(),
                    outcome: Outcome::FunctionError(ErrorBody {
                        error_type: "E".into(),
                        error_message: m,
                        stack_trace: st,
                    }),
                    logs: vec![],
                    logs_truncated: true,
                    duration_ms: 0,
                    network_us: 0,
                })
            }),
    ]
}

proptest! {
    #[test]
    fn any_message_round_trips_in_any_chunking(
        msgs in proptest::collection::vec(guest_message(), 1..5),
        chunk in 1usize..64,
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
        let mut dec = FrameDecoder::new(MAX_GUEST_FRAME);
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            dec.feed(piece);
            while let Some(m) = dec.next_message::<GuestMessage>().unwrap() {
                got.push(m);
            }
        }
        dec.finish().unwrap();
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn host_messages_round_trip(msg in host_message()) {
        let frame = encode(&msg).unwrap();
        let got: Option<HostMessage> = read_frame(&mut &frame[..], u32::MAX).unwrap();
        prop_assert_eq!(got, Some(msg));
    }

    /// Arbitrary bytes from a hostile guest never panic the decoder and never make it buffer
    /// past one frame's limit.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut dec = FrameDecoder::new(256);
        dec.feed(&bytes);
        while let Ok(Some(_)) = dec.next_message::<GuestMessage>() {}
        let _ = read_frame::<GuestMessage>(&mut &bytes[..], 256);
    }
}
