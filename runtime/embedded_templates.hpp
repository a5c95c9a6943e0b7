#pragma once
// The kernel templates under templates/, embedded at build time (cmake/embed_templates.cmake).
#include <string>
#include <vector>

namespace moejit {

struct EmbeddedHeader {
    std::string name;      // path relative to templates/, as the generated source includes it
    std::string contents;
};

// Sorted by name.
const std::vector<EmbeddedHeader>& embedded_headers();

}  // namespace moejit
