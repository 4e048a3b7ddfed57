"""Publishing a built image to Azure: a page-blob upload that sends only data, then ARM
resources (managed disk and image, Compute Gallery version). See docs/publish.md."""
