//! Who sees which file, deletes, and listing with filters, both orders and
//! keyset pagination.

use super::*;
use crate::common::{CHAT, new_batch, valid_file};
use fusillade::domain::file::FilePurpose;
use fusillade::store::{FileListQuery, Order, Owner};
use fusillade::{FileId, StoreError};

pub async fn owners_see_only_their_files<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 1)).await;
    let mine = store.get_file(Owner::Only("alice"), file.id).await.unwrap();
    assert_eq!(mine.as_ref(), Some(&file));
    assert_eq!(store.get_file(Owner::Any, file.id).await.unwrap(), mine);
    assert_eq!(
        store.get_file(Owner::Only("bob"), file.id).await.unwrap(),
        None
    );
    assert_eq!(
        store.get_file(Owner::Any, FileId::new()).await.unwrap(),
        None
    );
    let err = store
        .file_content(Owner::Only("bob"), file.id)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, StoreError::NotFound { what: "file", .. }),
        "{err:?}"
    );
}

pub async fn delete_hides_a_file_once<S: Backend>(store: &S) {
    let file = upload(store, "alice", &valid_file("r", 1)).await;
    assert!(
        !store
            .delete_file(Owner::Only("bob"), file.id)
            .await
            .unwrap()
    );
    assert!(store.get_file(Owner::Any, file.id).await.unwrap().is_some());

    assert!(
        store
            .delete_file(Owner::Only("alice"), file.id)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_file(Owner::Only("alice"), file.id).await.unwrap(),
        None
    );
    assert_eq!(store.get_file(Owner::Any, file.id).await.unwrap(), None);
    assert!(
        !store
            .delete_file(Owner::Only("alice"), file.id)
            .await
            .unwrap()
    );
    assert!(!store.delete_file(Owner::Any, file.id).await.unwrap());
    assert!(!store.delete_file(Owner::Any, FileId::new()).await.unwrap());
    let err = store.file_content(Owner::Any, file.id).await.err().unwrap();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let page = store.list_files(query(Owner::Any, 100)).await.unwrap();
    assert!(page.items.is_empty());

    // Owner::Any deletes anyone's file.
    let other = upload(store, "bob", &valid_file("r", 1)).await;
    assert!(store.delete_file(Owner::Any, other.id).await.unwrap());
    assert_eq!(store.get_file(Owner::Any, other.id).await.unwrap(), None);
}

fn query(owner: Owner<'_>, limit: i64) -> FileListQuery<'_> {
    FileListQuery {
        owner,
        purpose: None,
        after: None,
        limit,
        order: Order::default(),
    }
}

/// Every page of a listing, following `after`.
async fn all_pages<S: Backend>(store: &S, first: FileListQuery<'_>) -> Vec<Vec<FileId>> {
    let mut pages = Vec::new();
    let mut q = first;
    loop {
        let page = store.list_files(q).await.unwrap();
        let ids: Vec<FileId> = page.items.iter().map(|f| f.id).collect();
        assert!(ids.len() as i64 <= q.limit);
        if page.has_more {
            assert_eq!(ids.len() as i64, q.limit, "a page with more is full");
        }
        q.after = ids.last().copied();
        pages.push(ids);
        if !page.has_more {
            return pages;
        }
    }
}

pub async fn list_files_filters_orders_and_paginates<S: Backend>(store: &S) {
    let mut alice = Vec::new();
    for i in 0..7 {
        alice.push(
            upload(store, "alice", &valid_file(&format!("f{i}-"), 1))
                .await
                .id,
        );
    }
    let bob = upload(store, "bob", &valid_file("b", 1)).await.id;
    let newest_first: Vec<FileId> = alice.iter().rev().copied().collect();

    let page = store
        .list_files(query(Owner::Only("alice"), 100))
        .await
        .unwrap();
    assert!(!page.has_more);
    assert_eq!(
        page.items.iter().map(|f| f.id).collect::<Vec<_>>(),
        newest_first
    );
    assert!(page.items.iter().all(|f| f.owner == "alice"));

    let pages = all_pages(store, query(Owner::Only("alice"), 3)).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![3, 3, 1]
    );
    assert_eq!(pages.concat(), newest_first);

    let asc = FileListQuery {
        order: Order::Asc,
        ..query(Owner::Only("alice"), 2)
    };
    let pages = all_pages(store, asc).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 2, 1]
    );
    assert_eq!(pages.concat(), alice);

    // Exactly one full page: no more after it.
    let page = store
        .list_files(query(Owner::Only("alice"), 7))
        .await
        .unwrap();
    assert_eq!((page.items.len(), page.has_more), (7, false));

    let everyone = all_pages(store, query(Owner::Any, 4)).await.concat();
    assert_eq!(everyone.len(), 8);
    assert_eq!(everyone[0], bob);
    let page = store
        .list_files(query(Owner::Only("bob"), 10))
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![bob]
    );

    // A cursor from another owner's file gives an empty page, not theirs.
    let foreign = FileListQuery {
        after: Some(bob),
        ..query(Owner::Only("alice"), 10)
    };
    assert_eq!(store.list_files(foreign).await.unwrap().items, vec![]);

    // Limits are clamped to 1..=MAX_PAGE.
    for (limit, want) in [(0, 1), (-5, 1), (1, 1), (1_000_000, 7)] {
        let page = store
            .list_files(query(Owner::Only("alice"), limit))
            .await
            .unwrap();
        assert_eq!(page.items.len(), want, "limit {limit}");
        assert_eq!(page.has_more, want < 7, "limit {limit}");
        assert_eq!(page.items[0].id, newest_first[0]);
    }
}

pub async fn list_files_by_purpose<S: Backend>(store: &S) {
    let input = upload(store, "alice", &valid_file("r", 2)).await;
    let batch = store
        .create_batch(new_batch("alice", input.id, CHAT))
        .await
        .unwrap();
    let outputs = [batch.output_file_id.unwrap(), batch.error_file_id.unwrap()];

    let by = |purpose| FileListQuery {
        purpose: Some(purpose),
        order: Order::Asc,
        ..query(Owner::Only("alice"), 100)
    };
    let page = store.list_files(by(FilePurpose::Batch)).await.unwrap();
    assert_eq!(
        page.items.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![input.id]
    );
    let page = store
        .list_files(by(FilePurpose::BatchOutput))
        .await
        .unwrap();
    let mut got: Vec<FileId> = page.items.iter().map(|f| f.id).collect();
    got.sort();
    let mut want = outputs.to_vec();
    want.sort();
    assert_eq!(got, want);
    assert!(
        page.items
            .iter()
            .all(|f| f.purpose == FilePurpose::BatchOutput)
    );
    let all = store
        .list_files(query(Owner::Only("alice"), 100))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 3);
    let none = store
        .list_files(FileListQuery {
            owner: Owner::Only("bob"),
            ..by(FilePurpose::BatchOutput)
        })
        .await
        .unwrap();
    assert!(none.items.is_empty());
}
