//! Image records: get, list, create-or-update and delete, with labels.

use std::collections::HashMap;

use containerd_client::services::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, ListImagesRequest,
    UpdateImageRequest,
};
use prost_types::FieldMask;

use super::client::ContainerdClient;
use super::content::Descriptor;
use super::error::{ContainerdError, StatusContext, found, ignore_not_found};

/// An image record in containerd: a name pointing at a manifest or index blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// Full reference, e.g. `cluster.local:5000/demo:v1`.
    pub name: String,
    /// The manifest (or index) it points at.
    pub target: Descriptor,
    /// Labels on the record.
    pub labels: HashMap<String, String>,
}

impl ImageRecord {
    fn from_proto(op: &str, image: Image) -> Result<Self, ContainerdError> {
        let target = image
            .target
            .ok_or_else(|| ContainerdError::bad_data(op, "image record has no target"))?;
        Ok(ImageRecord {
            name: image.name,
            target: Descriptor::from_proto(target),
            labels: image.labels,
        })
    }

    fn to_proto(&self) -> Image {
        Image {
            name: self.name.clone(),
            labels: self.labels.clone(),
            target: Some(self.target.to_proto()),
            ..Default::default()
        }
    }
}

impl ContainerdClient {
    /// The image record `name`, or `None` when there is none.
    pub async fn get_image(&self, name: &str) -> Result<Option<ImageRecord>, ContainerdError> {
        let op = format!("get image {name}");
        let resp = found(
            self.images()
                .get(self.request(GetImageRequest {
                    name: name.to_string(),
                }))
                .await
                .op(|| op.clone()),
        )?;
        match resp.and_then(|r| r.into_inner().image) {
            Some(image) => Ok(Some(ImageRecord::from_proto(&op, image)?)),
            None => Ok(None),
        }
    }

    /// Image records matching containerd `filters` (all of them when empty), e.g.
    /// `labels."runtime.computer/entity-id"==artifact/demo`.
    pub async fn list_images(
        &self,
        filters: &[String],
    ) -> Result<Vec<ImageRecord>, ContainerdError> {
        let op = "list images";
        let resp = self
            .images()
            .list(self.request(ListImagesRequest {
                filters: filters.to_vec(),
            }))
            .await
            .op(|| op.to_string())?;
        resp.into_inner()
            .images
            .into_iter()
            .map(|i| ImageRecord::from_proto(op, i))
            .collect()
    }

    /// Creates image `record`, or updates its target and labels when it exists (labels
    /// are replaced as a whole). Returns the stored record.
    pub async fn put_image(&self, record: &ImageRecord) -> Result<ImageRecord, ContainerdError> {
        let op = format!("create image {}", record.name);
        let created = self
            .images()
            .create(self.request(CreateImageRequest {
                image: Some(record.to_proto()),
                source_date_epoch: None,
            }))
            .await
            .op(|| op.clone());
        let image = match created {
            Ok(resp) => resp.into_inner().image,
            Err(e) if e.is_already_exists() => {
                let op = format!("update image {}", record.name);
                self.images()
                    .update(self.request(UpdateImageRequest {
                        image: Some(record.to_proto()),
                        update_mask: Some(FieldMask {
                            paths: vec!["target".to_string(), "labels".to_string()],
                        }),
                        source_date_epoch: None,
                    }))
                    .await
                    .op(|| op.clone())?
                    .into_inner()
                    .image
            }
            Err(e) => return Err(e),
        };
        match image {
            Some(image) => ImageRecord::from_proto(&op, image),
            None => Ok(record.clone()),
        }
    }

    /// Deletes image record `name` (its blobs and snapshots become collectable when nothing
    /// else references them). A missing record is fine.
    pub async fn delete_image(&self, name: &str) -> Result<(), ContainerdError> {
        ignore_not_found(
            self.images()
                .delete(self.request(DeleteImageRequest {
                    name: name.to_string(),
                    sync: false,
                    target: None,
                }))
                .await
                .map(|_| ())
                .op(|| format!("delete image {name}")),
        )
    }
}
