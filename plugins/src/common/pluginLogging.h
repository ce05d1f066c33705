// Plugin messages go to the logger TensorRT hands the library through setLoggerFinder, or to
// stderr when it handed none (TensorRT-RTX passes a null finder).
#pragma once

#include "common/tensorrt.h"

#include <string>

namespace dflash
{

void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

void logError(std::string const& message);

} // namespace dflash
