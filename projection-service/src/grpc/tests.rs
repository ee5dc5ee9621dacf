use tonic::metadata::MetadataValue;

use super::*;

fn with_timeout(timeout: &'static str) -> Request<()> {
    let mut request = Request::new(());
    request
        .metadata_mut()
        .insert("grpc-timeout", MetadataValue::from_static(timeout));
    request
}

#[test]
fn the_wait_leaves_a_margin_within_the_clients_deadline_and_ten_seconds() {
    assert_eq!(deadline(&Request::new(())), Duration::from_secs(5));
    assert_eq!(deadline(&with_timeout("5S")), Duration::from_secs(4));
    assert_eq!(deadline(&with_timeout("250m")), Duration::from_millis(150));
    assert_eq!(deadline(&with_timeout("1H")), Duration::from_secs(10));
    assert_eq!(deadline(&with_timeout("5X")), Duration::from_secs(5));
}

#[test]
fn a_page_size_of_zero_is_the_default_and_a_large_one_the_maximum() {
    assert_eq!(page_size(0, 20, 100).ok(), Some(20));
    assert_eq!(page_size(7, 20, 100).ok(), Some(7));
    assert_eq!(page_size(1000, 20, 100).ok(), Some(100));
    assert!(matches!(
        page_size(-1, 20, 100),
        Err(QueryError::InvalidArgument(_))
    ));
}

#[test]
fn only_a_page_with_an_extra_row_has_a_next_page() {
    let mut rows = vec![1, 2, 3];
    assert_eq!(next_page_token(&mut rows, 2, |r| r.to_string()), "2");
    assert_eq!(rows, [1, 2]);
    let mut rows = vec![1, 2];
    assert_eq!(next_page_token(&mut rows, 2, |r| r.to_string()), "");
    assert_eq!(rows, [1, 2]);
}
