//! Signing, verification and the cache, including every way a token must be refused.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use opsconductor_tokens::*;

const NOW: u64 = 1_800_000_000;

fn setup() -> (SigningKey, KeySet, Validation) {
    let key = SigningKey::generate();
    let keys = KeySet::from_keys([key.public()]);
    (key, keys, Validation::new("opsconductor", "opsconductor"))
}

fn user_claims() -> Claims {
    Claims::user(
        "opsconductor",
        "opsconductor",
        "user-1",
        "operator",
        3,
        NOW,
        900,
    )
}

#[test]
fn round_trip() {
    let (key, keys, v) = setup();
    let token = key.sign(&user_claims()).unwrap();
    let claims = verify(&token, &keys, &v, NOW + 10).unwrap();
    assert_eq!(claims.sub, "user-1");
    assert_eq!(claims.kind, Kind::User);
    assert_eq!(claims.role.as_deref(), Some("operator"));
    assert_eq!(claims.ver, Some(3));
    assert_eq!(
        decode_header(&token).unwrap().kid.as_deref(),
        Some(key.kid())
    );
    let service = key
        .sign(&Claims::service(
            "opsconductor",
            "opsconductor",
            "jobs",
            NOW,
            600,
        ))
        .unwrap();
    let claims = verify(&service, &keys, &v, NOW).unwrap();
    assert_eq!((claims.kind, claims.role), (Kind::Service, None));
}

#[test]
fn refuses_time_issuer_and_audience_violations() {
    let (key, keys, v) = setup();
    let token = key.sign(&user_claims()).unwrap();
    assert_eq!(
        verify(&token, &keys, &v, NOW + 900 + 30),
        Err(TokenError::Expired)
    );
    assert!(
        verify(&token, &keys, &v, NOW + 900 + 29).is_ok(),
        "within leeway"
    );
    assert_eq!(
        verify(&token, &keys, &v, NOW - 31),
        Err(TokenError::NotYetValid)
    );
    let other_issuer = Validation::new("someone-else", "opsconductor");
    assert_eq!(
        verify(&token, &keys, &other_issuer, NOW),
        Err(TokenError::WrongIssuer)
    );
    let other_audience = Validation::new("opsconductor", "elsewhere");
    assert_eq!(
        verify(&token, &keys, &other_audience, NOW),
        Err(TokenError::WrongAudience)
    );
}

#[test]
fn refuses_forgeries() {
    let (key, keys, v) = setup();
    let token = key.sign(&user_claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();

    // Payload changed (an operator promoting themselves): the signature no longer matches.
    let mut claims = user_claims();
    claims.role = Some("admin".into());
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(
        verify(&forged, &keys, &v, NOW),
        Err(TokenError::BadSignature)
    );

    // Signed by a key that is not in the set, even with a known kid.
    let stranger = SigningKey::generate();
    let theirs = stranger.sign(&user_claims()).unwrap();
    assert!(matches!(
        verify(&theirs, &keys, &v, NOW),
        Err(TokenError::UnknownKey(_))
    ));
    let theirs_parts: Vec<&str> = theirs.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], theirs_parts[1], theirs_parts[2]);
    assert_eq!(
        verify(&spliced, &keys, &v, NOW),
        Err(TokenError::BadSignature)
    );

    // alg: none and HMAC are refused before any key is consulted.
    for alg in ["none", "HS256", "RS256"] {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, key.kid()));
        let token = format!("{header}.{}.", parts[1]);
        assert_eq!(
            verify(&token, &keys, &v, NOW),
            Err(TokenError::UnsupportedAlgorithm(alg.to_string()))
        );
    }
    // A real token padded past 8 KiB with a claim: three parts, valid base64, a good
    // signature. Only the length cap refuses it, before anything is decoded.
    let mut padded_claims = user_claims();
    padded_claims.sub = "x".repeat(9_000);
    let padded = key.sign(&padded_claims).unwrap();
    assert!(padded.len() > 8 * 1024 && padded.split('.').count() == 3);
    assert_eq!(
        verify(&padded, &keys, &v, NOW),
        Err(TokenError::Malformed("too long"))
    );
    for garbage in ["", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(10_000)] {
        assert!(
            matches!(
                verify(garbage, &keys, &v, NOW),
                Err(TokenError::Malformed(_))
            ),
            "{garbage:.20}"
        );
    }
}

#[test]
fn errors_and_debug_never_show_secrets() {
    let (key, keys, v) = setup();
    let token = key.sign(&user_claims()).unwrap();
    let err = verify(&token, &keys, &v, NOW + 10_000).unwrap_err();
    assert!(!err.to_string().contains(&token[..20]));
    let shown = format!("{key:?}");
    assert!(shown.contains(key.kid()));
    let secret = URL_SAFE_NO_PAD.encode(key.secret_bytes());
    assert!(!shown.contains(&secret));
}

#[test]
fn keys_survive_storage_and_jwks() {
    let key = SigningKey::generate();
    let restored = SigningKey::from_secret_bytes(&key.secret_bytes()).unwrap();
    assert_eq!(restored.kid(), key.kid());
    let jwk = key.public().to_jwk();
    assert_eq!(
        (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str()),
        ("OKP", "Ed25519", "EdDSA")
    );
    let json = serde_json::to_string(&jwk).unwrap();
    assert!(json.contains(r#""use":"sig""#), "{json}");
    let keys = KeySet::from_jwks([&serde_json::from_str::<Jwk>(&json).unwrap()]);
    let token = restored.sign(&user_claims()).unwrap();
    assert!(verify(
        &token,
        &keys,
        &Validation::new("opsconductor", "opsconductor"),
        NOW
    )
    .is_ok());

    let mut bad = jwk.clone();
    bad.crv = "P-256".into();
    assert!(PublicKey::from_jwk(&bad).is_err());
    assert!(
        KeySet::from_jwks([&bad]).is_empty(),
        "unusable keys are skipped"
    );
    assert!(SigningKey::from_secret_bytes(&[1, 2, 3]).is_err());
}

#[test]
fn rotation_keeps_old_tokens_valid_while_both_keys_are_published() {
    let (old, _, v) = setup();
    let new = SigningKey::generate();
    let before = old.sign(&user_claims()).unwrap();
    let after = new.sign(&user_claims()).unwrap();
    let both = KeySet::from_keys([old.public(), new.public()]);
    assert!(verify(&before, &both, &v, NOW).is_ok());
    assert!(verify(&after, &both, &v, NOW).is_ok());
    let only_new = KeySet::from_keys([new.public()]);
    assert!(matches!(
        verify(&before, &only_new, &v, NOW),
        Err(TokenError::UnknownKey(_))
    ));
}

#[test]
fn cache_hits_until_expiry_and_stays_bounded() {
    let (key, _, _) = setup();
    let cache = VerifiedCache::<Claims>::new(64);
    let token = key.sign(&user_claims()).unwrap();
    assert!(cache.get(&token, NOW).is_none());
    cache.insert(&token, Arc::new(user_claims()), NOW);
    assert_eq!(cache.get(&token, NOW + 1).unwrap().sub, "user-1");
    assert!(
        cache.get(&token, NOW + 900).is_none(),
        "expired entries are not served"
    );
    assert!(cache.is_empty(), "and are dropped");

    for i in 0..1000 {
        let mut c = user_claims();
        c.sub = format!("user-{i}");
        let t = key.sign(&c).unwrap();
        cache.insert(&t, Arc::new(c), NOW);
    }
    assert!(cache.len() <= 64 + 16, "bounded: {}", cache.len());

    let survivor = key.sign(&user_claims()).unwrap();
    cache.insert(&survivor, Arc::new(user_claims()), NOW);
    let dropped = cache.revoke(|c| c.sub == "user-1");
    assert!(dropped >= 1);
    assert!(
        cache.get(&survivor, NOW).is_none(),
        "revoked tokens leave the cache"
    );
}

#[test]
fn detached_signatures_bind_key_context_and_payload() {
    let (key, _, _) = setup();
    let other = SigningKey::generate();
    let keys = KeySet::from_keys([key.public(), other.public()]);
    let signature = key.sign_detached("ctx.v1", b"payload");
    assert!(keys
        .verify_detached(key.kid(), "ctx.v1", b"payload", &signature)
        .is_ok());
    for (kid, context, payload, sig) in [
        (key.kid(), "ctx.v1", &b"payloaD"[..], signature.as_str()),
        (key.kid(), "ctx.v2", &b"payload"[..], signature.as_str()),
        (other.kid(), "ctx.v1", &b"payload"[..], signature.as_str()),
        (key.kid(), "ctx.v1", &b"payload"[..], "not base64!"),
        (key.kid(), "ctx.v1", &b"payload"[..], "AAAA"),
    ] {
        assert!(
            keys.verify_detached(kid, context, payload, sig).is_err(),
            "{kid} {context}"
        );
    }
    assert!(matches!(
        KeySet::from_keys([other.public()]).verify_detached(
            key.kid(),
            "ctx.v1",
            b"payload",
            &signature
        ),
        Err(TokenError::UnknownKey(_))
    ));
    // A token's signature is not a detached signature of anything.
    let token = key.sign(&user_claims()).unwrap();
    let (signed, jws_signature) = token.rsplit_once('.').unwrap();
    assert!(keys
        .verify_detached(key.kid(), "", signed.as_bytes(), jws_signature)
        .is_err());
}

#[test]
fn the_claimed_issue_time_is_readable_unverified() {
    let (key, _, _) = setup();
    let claims = user_claims();
    let token = key.sign(&claims).unwrap();
    assert_eq!(
        opsconductor_tokens::unverified_issued_at(&token),
        Some(claims.iat)
    );
    assert_eq!(opsconductor_tokens::unverified_issued_at("garbage"), None);
}
